"""White-box gradient policy optimisers of the paper's simulations, and the round loop.

Two policies, as in Gauthier, Bach & Jordan (arXiv 2605.04266, Sec. 3):

* ``deterministic`` (linear env): the response ``y`` itself is the policy; each round takes one
  gradient-ascent step ``y += lr * grad_y objective(y)`` and submits ``y`` (and, if the env
  labels more per round, ``samples_per_round - 1`` responses drawn from ``N(y, sigma^2 I)``).
* ``gaussian`` (neural env): ``y ~ N(theta, sigma^2 I)``; each round takes ``inner_steps`` steps on
  one reparameterised sample ``y = theta + sigma * eps`` each, gradients clipped per coordinate,
  then submits ``samples_per_round`` fresh samples. ``sigma`` and the step size decay from their
  start to their end value by the factor ``1 - (t/T)^decay_power``.

The objective is ``agent.score(y) - l2 * ||y||^2``; agents differ only in :meth:`Agent.score`.
Gradients are exact (the agent's closed form, else autograd), batched over the ``S`` experiments
of a vectorised env. The round loop reads top to bottom in :func:`learn_together`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from gymnasium.vector import VectorEnv

from rlhf_envs.blind_spot import BlindSpotVectorEnv
from rlhf_envs.core import check_choice, check_float, check_int

POLICIES = ("deterministic", "gaussian")
#: a policy mean beyond this size in any dimension stops the run as diverged (the envs' action
#: Boxes are +-10; a finite but runaway policy would otherwise go unnoticed)
DIVERGED = 1e6


@dataclass
class WhiteBoxConfig:
    """Policy-optimiser settings. Defaults: the paper's linear simulation.

    Attributes:
        policy: ``"deterministic"`` (response updated in place) or ``"gaussian"``.
        rounds: RM rounds to run (>= 1).
        policy_lr: policy step size at the start (> 0).
        policy_lr_end: step size at the end (``None``: constant).
        sigma: policy std at the start (> 0; a deterministic policy's too, for its extra responses).
        sigma_end: std at the end (``None``: constant).
        decay_power: exponent ``p`` of the decay factor ``1 - (t/T)^p``.
        inner_steps: policy steps per round (>= 1).
        l2: weight of the ``||y||^2`` regulariser in the objective (>= 0).
        grad_clip: clip each gradient coordinate to ``[-grad_clip, grad_clip]`` (``None``: no).
        fpo_gamma: FPO penalty weight, the paper's gamma (>= 0; used by the FPO agents only;
            not SB3's discount ``gamma``).
        init: initial response / policy mean (a number broadcast to all dims).
        label_grad: let the policy gradient flow through the labeler's verdict in relaxed/exact
            FPO: each scored response then costs a gradient query instead of a value query
            (``False``: the verdict is a constant label; ``fpo-relaxed-grad`` sets it).
    """

    policy: str = "deterministic"
    rounds: int = 300
    policy_lr: float = 0.02
    policy_lr_end: float | None = None
    sigma: float = 0.1
    sigma_end: float | None = None
    decay_power: float = 4.0
    inner_steps: int = 1
    l2: float = 0.1
    grad_clip: float | None = None
    fpo_gamma: float = 0.1
    init: float = 0.0
    label_grad: bool = False

    def __post_init__(self) -> None:
        check_choice(self, "policy", POLICIES)
        for name in ("policy_lr", "policy_lr_end", "sigma", "sigma_end", "grad_clip"):
            if getattr(self, name) is not None or name in ("policy_lr", "sigma"):
                check_float(self, name, 0.0, strict=True)
        for name in ("l2", "fpo_gamma", "decay_power"):
            check_float(self, name, 0.0, strict=False)
        check_float(self, "init", -math.inf, strict=False)
        check_int(self, "rounds", 1)
        check_int(self, "inner_steps", 1)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _schedule(start: float, end: float | None, t: int, T: int, power: float) -> float:
    if end is None:
        return start
    return end + (start - end) * (1.0 - (t / T) ** power)


RoundCallback = Callable[[dict[str, np.ndarray]], None]

#: What an agent may read, besides the responses it scores. ``current_rm``: the env's reward
#: model as it is now; ``initial_rm``: the RM as it was at the start; ``rm_buffer``: the labels
#: the RM was trained on (already paid for); ``labeler_values`` / ``labeler_grads``: the
#: labeler's verdict on new responses, or its gradient (counted oracle queries: values in
#: ``oracle_queries``, gradients in ``oracle_grad_queries``); ``truth_values`` /
#: ``truth_grads``: the hidden true utility or its gradient (counted; the oracle ceiling).
READS = (
    "current_rm",
    "initial_rm",
    "rm_buffer",
    "labeler_values",
    "labeler_grads",
    "truth_values",
    "truth_grads",
)


def differentiable(value: torch.Tensor, grad: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``value`` (S, n) of a gradient query on ``y`` (S, n, d), made differentiable in ``y`` with
    the gradient ``grad`` that the query returned: the same number, whose autograd gradient is
    ``grad`` (first order). Oracle values themselves carry no gradient."""
    return value + ((y - y.detach()) * grad).sum(-1)


class Agent:
    """An agent is a scoring rule for responses plus a declaration of what it reads.

    Subclasses set :attr:`name` and define :meth:`score` (and, where it is cheaper,
    :meth:`score_grad`). Both policy optimisers ascend the same rule: the white-box gradient
    optimiser of the paper's simulations (:meth:`learn`) and any stable-baselines3 algorithm
    through :class:`agents.wrappers.AgentRewardWrapper`.

    In ``score(core, y, oracle)``, ``core`` is the agent's copy of the env's follower
    (:class:`agents.follower.Follower`; under SB3 a snapshot taken before the step) and
    ``oracle`` the env's counted queries (:class:`agents.follower.Oracle`).

    Class attributes read by the harness (declare them, do not compute them elsewhere):

    * ``reads``: the subset of :data:`READS` the agent uses (:meth:`declared_reads` may refine
      it from the config);
    * ``role``: ``"baseline"`` (naive and the usual defences), ``"method"`` (what is compared
      against the baselines) or ``"ceiling"`` (reads the truth);
    * ``sb3_algos``: the SB3 algorithms it works with (``None``: all), and
      :meth:`sb3_callbacks` for agents that act on the optimiser itself;
    * ``llm_penalty``: the FPO penalty form the LLM track uses for it (``None``: not in that track);
    * ``cost``: rough compute per agent-run relative to naive (for scheduling sweeps).
    """

    name = "base"
    config_cls = WhiteBoxConfig
    reads: tuple[str, ...] = ("current_rm",)
    role = "method"
    sb3_algos: tuple[str, ...] | None = None
    llm_penalty: str | None = None
    cost = 1.0
    #: values of the paper's reference notebooks, per env id (shown beside the leaderboard)
    paper_reference: dict[str, str] = {}

    def __init__(
        self, config: WhiteBoxConfig | None = None, seed: int | list[int] = 0, **fields_: Any
    ):
        if config is None:
            config = self.config_cls(**fields_)
        elif fields_:
            raise TypeError("pass either config or config fields, not both")
        elif not isinstance(config, self.config_cls):  # a base config: keep its fields
            config = self.config_cls(**config.to_dict())
        self.config = config
        self.seeds = [seed] if isinstance(seed, int) else list(seed)

    # -- what an agent optimises ------------------------------------------------------------------
    def declared_reads(self, sb3: bool = False) -> tuple[str, ...]:
        """What this agent reads with its config (default: the class's :attr:`reads`); under an
        SB3 algorithm (``sb3``) no gradient is used, so gradient reads become value reads."""
        return tuple(r.replace("_grads", "_values") for r in self.reads) if sb3 else self.reads

    def start(self, core) -> None:
        """Called once per experiment start (after ``reset(seed=...)``), before any scoring."""

    def restarts_policy(self, t: int, T: int) -> bool:
        """Whether the white-box policy restarts from ``init`` at the start of round ``t`` of
        ``T`` (default: never; the reward model is the env's and is never reset)."""
        return False

    def schedule_clock(self, t: int, T: int) -> tuple[int, int]:
        """``(t', T')`` that the policy's step-size and sigma schedules read at round ``t`` of
        ``T`` (default: ``(t, T)``, one schedule over the whole run)."""
        return t, T

    def score(self, core, y: torch.Tensor, oracle) -> torch.Tensor:  # pragma: no cover
        """The score the policy ascends, for responses ``y`` (S, n, d) -> (S, n)."""
        raise NotImplementedError

    def score_grad(self, core, y: torch.Tensor, oracle) -> torch.Tensor | None:
        """Closed-form ``grad_y score(y)`` (S, n, d), or ``None`` to use autograd on :meth:`score`.

        Must charge the same oracle queries as :meth:`score`; tests check both paths agree.
        """
        return None

    def sb3_score(self, core, y: torch.Tensor, oracle) -> torch.Tensor:
        """The reward an SB3 algorithm is paid (default: :meth:`score`). It takes no gradient:
        agents that ask for gradients in :meth:`score` ask for values here."""
        return self.score(core, y, oracle)

    def sb3_callbacks(self) -> list:
        """SB3 callbacks through which the agent acts on the optimiser itself (default: none)."""
        return []

    # -- the white-box loop -------------------------------------------------------------------------
    def learn(
        self, env, rounds: int | None = None, callback: RoundCallback | None = None
    ) -> dict[str, np.ndarray]:
        """Run ``rounds`` iterative-RLHF rounds on ``env`` (already reset with its seeds).

        Returns per-round metrics, each an array of shape ``(rounds, S)``; ``callback`` is called
        after each round with that round's metrics.
        """
        return learn_together([self], env, rounds, [callback])[0]

    def ascend(self, core, theta: torch.Tensor, y: torch.Tensor, lr: float, oracle) -> torch.Tensor:
        """One white-box policy step from the mean ``theta`` (S, d) with the response ``y`` (S, d):
        by default a step of size ``lr`` up the objective's gradient at ``y`` (clipped)."""
        y = y.detach().unsqueeze(1)
        grad = self.score_grad(core, y, oracle)
        if grad is None:
            y.requires_grad_(True)
            (grad,) = torch.autograd.grad(self.score(core, y, oracle).sum(), y)
        grad = grad[:, 0] - 2.0 * self.config.l2 * y[:, 0].detach()  # grad_y [score - l2 ||y||^2]
        if self.config.grad_clip is not None:
            grad = grad.clamp(-self.config.grad_clip, self.config.grad_clip)
        return theta + lr * grad


def derived_seed(seed: int, *tags: int) -> int:
    """A seed for a stream of its own (the agent's, an extra RM's), distinct from the env's
    stream for the same seed and from the streams of other ``tags``."""
    return int(np.random.SeedSequence([int(seed), *tags]).generate_state(1)[0])


def _submit(env, y: torch.Tensor, vector: bool) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(env, BlindSpotVectorEnv):  # unwrapped: the same transition, no info dict
        return env.submit(y)
    if vector:
        _, _, _, _, info = env.step(y.numpy())
        return info["proxy_reward"], info["true_utility"]
    _, _, terminated, truncated, info = env.step(y[0].numpy())
    if terminated or truncated:
        env.reset()  # keeps the reward model: the next episode of the same experiment
    return np.array([info["proxy_reward"]]), np.array([info["true_utility"]])


def counters(core) -> dict[str, np.ndarray]:
    """The label and query counters now, per experiment (copies of :meth:`RLHFCore.counters`)."""
    return {k: v.copy() for k, v in core.counters().items()}


def round_metrics(core, theta: torch.Tensor, proxies, trues, counted) -> dict[str, np.ndarray]:
    """One round's record, computed on the env's side from what the agents submitted: the true
    utility and proxy of the policy means ``theta`` (S, d) (a response like any other), the
    sampled responses' ``proxies`` and ``trues`` (spr, S), and the :func:`counters` ``counted``
    at the round's end."""
    k = core.config.signal_dims
    with torch.no_grad():
        u_mean = core.utility(theta).numpy()
        r_mean = core.score(theta.unsqueeze(1))[:, 0].numpy()
    return {
        "true_utility": u_mean,
        "proxy_reward": r_mean,
        "gap": r_mean - u_mean,
        "sample_true_utility": trues.mean(0),
        "sample_proxy_reward": proxies.mean(0),
        "rm_error": np.abs(proxies - trues).mean(0),
        "signal_norm": torch.linalg.vector_norm(theta[:, :k], 2, -1).numpy(),
        "noise_norm": torch.linalg.vector_norm(theta[:, k:], 2, -1).numpy(),
        **counted,
    }


class Player:
    """The agent's side of a white-box run: its policy, optimised each round against its copy of
    the follower (:class:`agents.follower.Follower`) with counted queries (``ask``)."""

    def __init__(self, agent: Agent, reads: tuple[str, ...], state: dict, ask):
        from agents.follower import Follower, Oracle

        self.agent, self.cfg = agent, agent.config
        self.view, self.oracle = Follower(reads, state), Oracle(ask)
        self.gaussian = agent.config.policy == "gaussian"
        self.gens = [torch.Generator().manual_seed(derived_seed(s, 0x5EED)) for s in agent.seeds]
        self.sigma, self.eps = 0.0, None
        agent.start(self.view)
        self.theta = self.start_theta()

    def start_theta(self) -> torch.Tensor:
        d = self.view.config.dims
        return torch.full((self.view.S, d), float(self.cfg.init), dtype=self.view.dtype)

    def play(self, t: int, T: int, state: dict | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Round ``t`` of ``T`` after the follower's update ``state``: the policy mean (S, d)
        and the responses to submit (spr, S, d)."""
        if state is not None:
            self.view.update(state)
        spr = self.view.config.samples_per_round
        self.optimise(t, T, spr, self.view.config.dims)
        return self.theta, torch.stack([self.response(j) for j in range(spr)])

    def response(self, j: int) -> torch.Tensor:
        """The ``j``-th response submitted this round, (S_agent, d)."""
        if self.gaussian or j:  # a deterministic policy's extra responses explore around it
            return self.theta + self.sigma * self.eps[:, self.cfg.inner_steps + j]
        return self.theta

    def optimise(self, t: int, T: int, spr: int, d: int) -> None:
        """Round ``t``'s policy steps against the current reward model."""
        agent, cfg = self.agent, self.cfg
        if t and agent.restarts_policy(t, T):
            self.theta = self.start_theta()
        tc, Tc = agent.schedule_clock(t, T)
        lr = _schedule(cfg.policy_lr, cfg.policy_lr_end, tc, Tc, cfg.decay_power)
        self.sigma = _schedule(cfg.sigma, cfg.sigma_end, tc, Tc, cfg.decay_power)
        if self.gaussian or spr > 1:
            n = cfg.inner_steps + spr
            eps = [torch.randn(n, d, generator=g, dtype=torch.float64) for g in self.gens]
            self.eps = torch.stack(eps).to(self.view.dtype)  # float64 streams, rounded if float32
        theta = self.theta
        for i in range(cfg.inner_steps):
            y = theta + self.sigma * self.eps[:, i] if self.gaussian else theta
            theta = agent.ascend(self.view, theta, y, lr, self.oracle)
        self.theta = theta
        sane = (theta.abs() <= DIVERGED).all(1)  # False for NaN too
        if not sane.all():
            bad = [s for s, ok in zip(agent.seeds, sane, strict=True) if not ok]
            raise FloatingPointError(
                f"policy became NaN/inf or diverged past |y| = {DIVERGED:.0e} at round {t} "
                f"(seeds {bad}); lower policy_lr or the agent's coefficients"
            )


class Seat:
    """The env's side of one agent in a run: its experiments ``rows``, its declared ``reads``,
    how it is asked for a round (:meth:`send` the follower's update, :meth:`receive` the play of
    its :class:`Player`; here in this process, in harness runs in the agent's own:
    :func:`baselines.judge.remote_seat`) and the record the env's side keeps of it."""

    def __init__(self, rows: slice, reads: tuple[str, ...], player=None, callback=None):
        self.rows, self.reads, self.player, self.callback = rows, tuple(reads), player, callback
        self.history: dict[str, list[np.ndarray]] = {}
        self.error: BaseException | None = None  # set when the policy diverged
        self._played = None

    def send(self, t: int, T: int, state: dict | None) -> None:
        """Ask for round ``t`` of ``T`` after the follower's update ``state``."""
        self._played = self.player.play(t, T, state)

    def receive(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The round's play: the policy mean (n, d) and the responses (spr, n, d)."""
        return self._played

    def record(self, row: dict[str, np.ndarray]) -> None:
        for key, v in row.items():
            self.history.setdefault(key, []).append(v[self.rows])
        if self.callback is not None:
            self.callback({key: v[-1] for key, v in self.history.items()})


def learn_together(
    agents: list[Agent],
    env,
    rounds: int | None = None,
    callbacks: list[RoundCallback | None] | None = None,
    stopped: dict[int, FloatingPointError] | None = None,
) -> list[dict[str, np.ndarray] | None]:
    """Run several agents for ``rounds`` rounds on one vector env, each on its own experiments,
    in this process (harness runs put each agent in a process of its own: :mod:`baselines.judge`).

    The env (already reset) holds the experiments of every agent, in order: the first agent's
    seeds, then the second's, and so on. Each agent sees a copy of its experiments' follower and
    counted queries charged to them alone (:mod:`agents.follower`). ``rounds``: default, the first
    agent's ``config.rounds``. Returns one history per agent, as :meth:`Agent.learn`; ``stopped``:
    see :func:`run_rounds`.
    """
    from agents.follower import answer, follower_state

    if not agents:
        raise ValueError("learn_together needs at least one agent")
    callbacks = list(callbacks) if callbacks is not None else [None] * len(agents)
    if len(callbacks) != len(agents):
        raise ValueError(f"got {len(callbacks)} callbacks for {len(agents)} agents")
    core = env.unwrapped.core
    if not core.seeds:
        raise RuntimeError("reset the env with a seed before learn()")
    if len(agents) > 1 and not isinstance(env.unwrapped, VectorEnv):
        raise ValueError("several agents need a vector env (gym.make_vec)")
    sizes = [len(a.seeds) for a in agents]
    if sum(sizes) != core.S:
        what = "agent has" if len(agents) == 1 else "agents have"
        raise ValueError(f"{what} {sum(sizes)} seeds, env has {core.S} experiments")
    seats, players, lo = [], [], 0
    for agent, n, cb in zip(agents, sizes, callbacks, strict=True):
        rows, reads = slice(lo, lo + n), agent.declared_reads()

        def ask(kind, ys, rows=rows, reads=reads):
            return answer(core, rows, reads, kind, ys, env.unwrapped.ys_error)

        players.append(Player(agent, reads, follower_state(core, rows, reads, True), ask))
        seats.append(Seat(rows, reads, players[-1], cb))
        lo += n
    out = run_rounds(env, seats, rounds if rounds is not None else agents[0].config.rounds, stopped)
    for agent, player, history in zip(agents, players, out, strict=True):
        if history is not None:
            agent.theta = player.theta  # the final policy mean
    return out


def run_rounds(env, seats: list[Seat], T: int, stopped: dict | None = None) -> list:
    """The round loop, on the env's side: each round every seat plays (its policy mean and its
    responses), all responses go to the env in one step per sample (scored, labelled, the RM
    retrained once for all), and the env's side records each seat's rows of
    :func:`round_metrics`. An experiment's numbers do not depend on what else shares the batch.
    Each seat is sent the follower's update before the round's record is computed, so seats in
    other processes play the next round meanwhile.

    ``stopped``: a dict to collect the seats whose policy diverges or whose play is refused
    (index -> the error) while the others go on; a stopped seat's history is ``None`` and its
    experiments get zero responses from then on. Without it, the first error raises.
    """
    from agents.follower import follower_state

    core = env.unwrapped.core
    vector = isinstance(env.unwrapped, VectorEnv)
    spr, d = core.config.samples_per_round, core.config.dims

    def ask(i: int, seat: Seat, t: int, state: dict | None) -> None:
        try:
            seat.send(t, T, state)
        except (FloatingPointError, ValueError) as e:
            if stopped is None:
                raise
            seat.error = stopped[i] = e

    for i, seat in enumerate(seats):
        ask(i, seat, 0, None)
    for t in range(T):
        thetas, ys = [], []
        for i, seat in enumerate(seats):
            n = len(range(*seat.rows.indices(core.S)))
            if seat.error is None:
                try:
                    theta, y = seat.receive()
                    _check_play(theta, y, n, spr, d, core.dtype)
                except (FloatingPointError, ValueError) as e:
                    if stopped is None:
                        raise
                    seat.error = stopped[i] = e
            if seat.error is not None:
                theta = torch.zeros(n, d, dtype=core.dtype)
                y = torch.zeros(spr, n, d, dtype=core.dtype)
            thetas.append(theta)
            ys.append(y)
        if len(stopped or ()) == len(seats):
            break
        y_all = torch.cat(ys, dim=1)
        proxies, trues = zip(*(_submit(env, y_all[j], vector) for j in range(spr)), strict=True)
        live, counted = [seat.error is None for seat in seats], counters(core)
        for i, seat in enumerate(seats):
            if live[i] and t + 1 < T:
                ask(i, seat, t + 1, follower_state(core, seat.rows, seat.reads, False))
        row = round_metrics(core, torch.cat(thetas), np.stack(proxies), np.stack(trues), counted)
        for i, seat in enumerate(seats):
            if live[i]:
                seat.record(row)
    return [
        {k: np.stack(v) for k, v in s.history.items()} if s.error is None else None for s in seats
    ]


def _check_play(theta, y, n: int, spr: int, d: int, dtype) -> None:
    """A seat's play is its policy mean (n, d) and its responses (spr, n, d), tensors of the
    env's dtype within :data:`DIVERGED`; anything else is refused with one line."""
    for name, v, shape in (("policy mean", theta, (n, d)), ("responses", y, (spr, n, d))):
        if not isinstance(v, torch.Tensor) or v.dtype != dtype or tuple(v.shape) != shape:
            got = (v.dtype, tuple(v.shape)) if isinstance(v, torch.Tensor) else type(v).__name__
            raise ValueError(f"the agent's {name} must be {dtype} of shape {shape}, got {got}")
        if not (v.abs() <= DIVERGED).all():  # False for NaN too
            raise FloatingPointError(
                f"policy became NaN/inf or diverged past |y| = {DIVERGED:.0e}: the agent's {name}"
            )
