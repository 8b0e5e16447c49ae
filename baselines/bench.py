"""Speed of the suite, measured in one run: env steps/s and seconds per agent-run.

    python -m baselines.bench [--envs ID ...] [--agents NAME ...] [--seeds 10] [--rounds N]
                              [--repeats 3] [--family K=V1,V2 ...] [--family-split SPLIT]
                              [--family-rounds N] [--sb3-profile] [--float32]
                              [--round-profile] [--profile-rounds N]

For each env: single-env steps/s with random actions (RM retraining included); for each
white-box agent: seconds per agent-run when ``--seeds`` seeds run as one batched program, and when
one seed runs alone (measured on fewer rounds and scaled to the same round count), the batching
speed-up, and the cost of every agent relative to naive; then the wall time of one SB3 run per
agent of ``--agents`` (those that work with ``--sb3``) relative to naive. The token and contextual envs have no
white-box agents, so only their SB3 rows are measured. On the blind-spot envs a family row follows:
seconds per agent-run over a list of env configs (``--family``: a grid of env kwargs, by default
``target_value`` x ``utility_width``; ``--family-split test`` takes the split of
:mod:`rlhf_envs.families` where the env has one; :func:`family_seconds` takes any list of kwarg
dicts). Medians over ``--repeats``; the machine is
shared (its load average is printed), so compare the ratios, which are measured side by side,
rather than absolute times across runs.

``--float32`` adds a column: each white-box agent's seconds per agent-run with the env's
follower in float32 (env kwarg ``dtype=float32``), and how many times faster that is.

``--round-profile`` adds, per blind-spot env, where a white-box round's time goes
(:func:`round_split`): CPU milliseconds per round in the agent's score gradient and policy
step, the env's scoring and RM retraining, and the harness's recording, per agent.

``--sb3-profile`` adds, per env, where one SB3 agent-run's time goes (:func:`sb3_split`): the
CPU seconds of the run's thread in each part of the loop, the suite's own (env step, RM
retraining, reward wrapper, agent score, harness) and stable-baselines3's (rollout loop, policy
forward, gradient update), one run per agent of ``--sb3-rounds`` rounds.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import os
import statistics
import sys
import time
from collections import defaultdict

import gymnasium as gym
import numpy as np
import torch

import rlhf_envs
from agents import registry
from baselines.plan import load_defaults


def env_steps_per_second(env_id: str, steps: int, repeats: int) -> float:
    rates = []
    for r in range(repeats):
        env = gym.make(env_id)
        env.reset(seed=r)
        space = env.action_space
        if isinstance(space, gym.spaces.Box):
            # moderate responses: the full box (+-10 on 50 dims) makes the linear RM's SGD
            # diverge, which the env reports as an error
            rng = np.random.default_rng(r)
            actions = rng.uniform(-3, 3, size=(steps, *space.shape)).astype(space.dtype)
        else:
            space.seed(r)
            actions = [space.sample() for _ in range(steps)]
        t = time.perf_counter()
        for a in actions:
            env.step(a)
            env.reset()
        rates.append(steps / (time.perf_counter() - t))
    return statistics.median(rates)


def agent_seconds(
    env_id: str,
    agent: str,
    seeds: list[int],
    rounds: int,
    repeats: int,
    env_kwargs: dict | None = None,
) -> float:
    """Median wall seconds of one batched learn() over ``seeds`` for ``rounds`` rounds."""
    return together_seconds(env_id, [agent], seeds, rounds, repeats, env_kwargs)


def together_seconds(
    env_id: str,
    agents: list[str],
    seeds: list[int],
    rounds: int,
    repeats: int,
    env_kwargs: dict | None = None,
) -> float:
    """Median wall seconds of one :func:`~agents.whitebox.learn_together` of all ``agents``
    (each over ``seeds``) on one batched env, as the harness runs agents of one env config (one
    agent: its own ``learn``)."""

    def program(n_rounds: int) -> float:
        return _program(env_id, agents, seeds, n_rounds, env_kwargs)

    compiled = [a for a in agents if getattr(registry.get(a), "compiled", False)]
    if compiled:  # compile outside the timed runs (once per process and batch size)
        first = program(1)
        COMPILE_SECONDS.update({(a, len(seeds)): first for a in compiled})
    return statistics.median(program(rounds) for _ in range(repeats))


def _program(
    env_id: str,
    agents: list[str],
    seeds: list[int],
    rounds: int,
    env_kwargs: dict | None,
    around=contextlib.nullcontext,
) -> float:
    """Wall seconds of one :func:`~agents.whitebox.learn_together` of ``agents`` (each over
    ``seeds``, the env's YAML settings) for ``rounds`` rounds, the env built beforehand;
    ``around()``: a context entered around that call alone."""
    from agents.whitebox import learn_together

    defaults = load_defaults(env_id)
    made = []
    for agent in agents:
        cls = registry.get(agent)
        kwargs = {**defaults.get("agent", {}), **defaults.get("agents", {}).get(cls.name, {})}
        made.append(cls(cls.config_cls(**{**kwargs, "rounds": rounds}), seed=seeds))
    env = gym.make_vec(
        env_id,
        num_envs=len(seeds) * len(agents),
        vectorization_mode="vector_entry_point",
        **(env_kwargs or {}),
    )
    env.reset(seed=seeds * len(agents))
    with around():
        t = time.perf_counter()
        learn_together(made, env, rounds)
        return time.perf_counter() - t


#: ``(agent, seeds) -> `` wall seconds of the untimed first round that compiled its kernels
COMPILE_SECONDS: dict[tuple[str, int], float] = {}


def sb3_seconds(env_id: str, agent: str, algo: str, rounds: int, repeats: int) -> float:
    """Median seconds of one SB3 run (one seed) of ``rounds`` RM rounds."""
    from baselines.sb3_runner import learn_sb3

    defaults = load_defaults(env_id)
    cfg = {**defaults.get("agent", {}), **defaults.get("agents", {}).get(agent, {})}
    hyper = defaults.get("sb3", {}).get(algo, {})
    times = []
    for r in range(repeats):
        t = time.perf_counter()
        learn_sb3(env_id, {}, agent, cfg, algo, hyper, rounds, seed=r)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


#: The parts of an SB3 agent-run, in the order the profile lists them; ``ours`` are the suite's.
SB3_PARTS = (
    ("ours", "env step (env, core, excl. RM retraining)"),
    ("ours", "RM retraining (label, push, optimiser steps)"),
    ("ours", "reward wrapper (snapshot, counters, sealing)"),
    ("ours", "agent score (RM score, FPO penalties, queries)"),
    ("ours", "harness (recorder and agent callbacks, final evaluation)"),
    ("SB3", "rollout loop (VecEnv, Monitor, buffer, info copies)"),
    ("SB3", "policy forward (torch)"),
    ("SB3", "gradient update (torch)"),
    ("SB3", "model and env construction"),
    ("gymnasium", "gym.make's wrappers"),
)


class _Split:
    """Exclusive CPU time per part: a call to a timed function charges its own time to its
    part, less the time of the timed calls nested in it (about 1 us of overhead per call)."""

    def __init__(self, base: str):
        self.seconds: dict[str, float] = defaultdict(float)
        self.stack = [base]
        self.last = time.thread_time()

    def _switch(self) -> None:
        now = time.thread_time()
        self.seconds[self.stack[-1]] += now - self.last
        self.last = now

    def timed(self, fn, part: str):
        @functools.wraps(fn)
        def call(*args, **kwargs):
            self._switch()
            self.stack.append(part)
            try:
                return fn(*args, **kwargs)
            finally:
                self._switch()
                self.stack.pop()

        return call


@contextlib.contextmanager
def _timing(targets: list[tuple], split: _Split):
    """Replace each ``(owner, name, part)`` function by its timed form while the block runs."""
    saved, seen = [], set()
    try:
        for owner, name, part in targets:
            if isinstance(owner, type):  # the class that defines it
                owner = next(c for c in owner.__mro__ if name in c.__dict__)
            if (id(owner), name) in seen:
                continue
            seen.add((id(owner), name))
            fn = owner.__dict__[name]
            saved.append((owner, name, fn))
            if isinstance(fn, staticmethod):  # stays a static method once timed
                setattr(owner, name, staticmethod(split.timed(fn.__func__, part)))
            else:
                setattr(owner, name, split.timed(fn, part))
        yield
    finally:
        for owner, name, fn in reversed(saved):
            setattr(owner, name, fn)


def sb3_split(
    env_id: str, agent: str, algo: str, rounds: int, seed: int = 0
) -> tuple[dict[str, float], float]:
    """Where one SB3 run's time goes: ``({part: CPU seconds}, total CPU seconds)``.

    Runs :func:`baselines.sb3_runner.learn_sb3` as the harness does (the env's YAML settings,
    ``rounds`` RM rounds, one seed) with the functions of each part of :data:`SB3_PARTS`
    timed; CPU time of the run's thread, so a loaded machine changes the figures less than
    wall time would (torch runs on this thread: ``torch.set_num_threads(1)``).
    """
    from gymnasium.wrappers import common as gym_wrappers
    from stable_baselines3.common import callbacks, policies

    from agents.wrappers import AgentRewardWrapper
    from baselines import sb3_runner
    from rlhf_envs.core import RLHFCore

    defaults = load_defaults(env_id)
    cfg = {**defaults.get("agent", {}), **defaults.get("agents", {}).get(agent, {})}
    hyper = defaults.get("sb3", {}).get(algo, {})
    env_cls = type(gym.make(env_id).unwrapped)
    alg = sb3_runner.algorithm(algo)
    (step, retrain, wrap, score, harness, loop, forward, update, setup, gym_part) = [
        f"{who}: {what}" for who, what in SB3_PARTS
    ]
    cls = registry.get(agent)
    targets = [
        (env_cls, "step", step),
        (env_cls, "reset", step),
        (RLHFCore, "_label_and_retrain", retrain),
        (AgentRewardWrapper, "step", wrap),
        (AgentRewardWrapper, "reset", wrap),
        (cls, "sb3_score", score),
        (callbacks.CallbackList, "_on_step", harness),
        (callbacks.CallbackList, "_on_rollout_start", harness),
        (callbacks.CallbackList, "_on_rollout_end", harness),
        (sb3_runner, "evaluate_deterministic", harness),
        (alg, "learn", loop),
        (policies.ActorCriticPolicy, "forward", forward),
        (policies.BasePolicy, "predict", forward),
        (alg, "train", update),
        (gym_wrappers.OrderEnforcing, "step", gym_part),
        (gym_wrappers.PassiveEnvChecker, "step", gym_part),
    ]
    split = _Split(setup)
    with _timing(targets, split):
        start = split.last
        sb3_runner.learn_sb3(env_id, {}, agent, cfg, algo, hyper, rounds, seed=seed)
        split._switch()
    return dict(split.seconds), split.last - start


def sb3_profile_table(env_id: str, agents: list[str], algo: str, rounds: int) -> None:
    """Print the parts of one SB3 run per agent (:func:`sb3_split`), CPU seconds and shares."""
    sb3_split(env_id, registry.REFERENCE, algo, 3)  # warm-up: imports, first compile
    splits = [sb3_split(env_id, a, algo, rounds) for a in agents]
    print(f"where one {algo.upper()} run's time goes ({rounds} RM rounds, seed 0, CPU s):\n")
    print("| part | " + " | ".join(agents) + " |")
    print("|---|" + "---|" * len(agents))

    def row(name: str, values: list[tuple[float, float]]) -> None:
        print(f"| {name} | " + " | ".join(f"{s:.2f} ({s / t:.0%})" for s, t in values) + " |")

    for who, what in SB3_PARTS:
        part = f"{who}: {what}"
        row(part, [(sec.get(part, 0.0), total) for sec, total in splits])
    ours = [(sum(v for k, v in sec.items() if k.startswith("ours")), t) for sec, t in splits]
    row("**ours, total**", ours)
    row("**SB3 and gymnasium, total**", [(t - s, t) for s, t in ours])
    row("**run**", [(t, t) for _, t in splits])
    print()


#: the parts of a white-box round (:func:`round_split`), in table order
ROUND_PARTS = (
    ("agent", "score gradient (RM, penalties, oracle queries)"),
    ("agent", "policy step (sampling, clipping, update)"),
    ("env", "scoring the responses (RM score, utility, counters)"),
    ("env", "RM retraining (label, push, optimiser steps)"),
    ("harness", "metrics and recording"),
    ("harness", "round loop"),
)


def round_split(
    env_id: str, agent: str, seeds: list[int], rounds: int, env_kwargs: dict | None = None
) -> tuple[dict[str, float], float]:
    """Where a white-box program's time goes: ``({part: CPU seconds}, total CPU seconds)``
    for one batched ``learn`` of ``agent`` over ``seeds`` (the env's YAML settings) with the
    functions of each part of :data:`ROUND_PARTS` timed (CPU time of this thread)."""
    from agents import whitebox
    from rlhf_envs.blind_spot import BlindSpotVectorEnv
    from rlhf_envs.core import RLHFCore

    grad, policy, scoring, retrain, record, loop = [f"{a}: {b}" for a, b in ROUND_PARTS]
    cls = registry.get(agent)
    targets = [
        (cls, "_objective_grad", grad),
        (whitebox._Member, "optimise", policy),
        (BlindSpotVectorEnv, "submit", scoring),
        (RLHFCore, "step", scoring),
        (RLHFCore, "_label_and_retrain", retrain),
        (cls, "_metrics", record),
        (whitebox._Member, "record", record),
    ]
    if getattr(cls, "compiled", False):  # compile outside the timed run
        _program(env_id, [agent], seeds, 1, env_kwargs)
    split = _Split(loop)
    span: list[float] = []

    @contextlib.contextmanager
    def timed():
        with _timing(targets, split):
            split._switch()
            split.seconds.clear()  # the env's construction is not a round's
            span.append(split.last)
            yield
            split._switch()
            span.append(split.last)

    _program(env_id, [agent], seeds, rounds, env_kwargs, timed)
    return dict(split.seconds), span[1] - span[0]


def round_profile_table(env_id: str, args: argparse.Namespace) -> None:
    """Print milliseconds of CPU per round in each part of :data:`ROUND_PARTS`, per agent."""
    seeds, rounds = list(range(args.seeds)), args.profile_rounds
    splits = [round_split(env_id, a, seeds, rounds) for a in args.agents]
    print(
        f"where a white-box round's time goes ({args.seeds} seeds batched, CPU ms per round, "
        f"{rounds} rounds):\n"
    )
    print("| part | " + " | ".join(args.agents) + " |")
    print("|---|" + "---|" * len(args.agents))
    for who, what in ROUND_PARTS:
        part = f"{who}: {what}"
        cells = [
            f"{1e3 * sec.get(part, 0.0) / rounds:.2f} ({sec.get(part, 0.0) / t:.0%})"
            for sec, t in splits
        ]
        print(f"| {part} | " + " | ".join(cells) + " |")
    print("| **round** | " + " | ".join(f"{1e3 * t / rounds:.2f}" for _, t in splits) + " |\n")


def white_box_table(env_id: str, args: argparse.Namespace, rounds: int) -> None:
    """Print seconds per white-box agent-run, batched over seeds and alone."""
    f32 = " s/agent-run float32 (x faster) |" if args.float32 else ""
    print(
        "| agent | s/agent-run batched | s/agent-run alone | batching speed-up | x naive (batched) |"
        + f32
    )
    print("|---|---|---|---|---|" + ("---|" if f32 else ""))
    single_rounds = min(rounds, args.single_rounds)
    rows = {}
    seeds = list(range(args.seeds))
    for agent in args.agents:
        batched = agent_seconds(env_id, agent, seeds, rounds, args.repeats)
        alone = agent_seconds(env_id, agent, [0], single_rounds, args.repeats)
        t32 = (
            agent_seconds(env_id, agent, seeds, rounds, args.repeats, {"dtype": "float32"})
            if args.float32
            else None
        )
        rows[agent] = (batched / args.seeds, alone * rounds / single_rounds, t32)
    base = rows.get(registry.REFERENCE, next(iter(rows.values())))[0]
    for agent, (b, a, t32) in rows.items():
        extra = "" if t32 is None else f" {t32 / args.seeds:.3f} ({b * args.seeds / t32:.2f}x) |"
        print(f"| {agent} | {b:.3f} | {a:.3f} | {a / b:.1f}x | {b / base:.2f}x |" + extra)
    print()
    first = {
        a: COMPILE_SECONDS[a, args.seeds] for a in args.agents if (a, args.seeds) in COMPILE_SECONDS
    }
    for agent, seconds in first.items():
        print(
            f"{agent} compiles its kernels once per process and batch size, outside the times "
            f"above (its first round, {args.seeds} seeds, compilation included: {seconds:.1f} s)"
        )
    if first:
        print()
    if len(args.agents) > 1:
        seeds = list(range(args.seeds))
        both = together_seconds(env_id, args.agents, seeds, rounds, args.repeats)
        apart = sum(r[0] for r in rows.values()) * args.seeds
        n = len(args.agents)
        print(
            f"all {n} agents in one program ({n} x {args.seeds} experiments, as the harness "
            f"runs agents of one env config): {both:.2f} s against {apart:.2f} s for the "
            f"{n} batched programs one after the other: {apart / both:.2f}x "
            f"({both / (n * args.seeds):.3f} s/agent-run)\n"
        )


def family_seconds(
    env_id: str,
    agent: str,
    configs: list[dict],
    seeds: list[int],
    rounds: int,
    repeats: int,
) -> float:
    """Wall seconds per agent-run of ``agent`` over every env config in ``configs`` (a list of
    env-kwarg dicts, e.g. a family's test split), each config's seeds as one batched program:
    the sum over configs of :func:`agent_seconds` (medians), divided by the agent-runs."""
    total = sum(agent_seconds(env_id, agent, seeds, rounds, repeats, cfg) for cfg in configs)
    return total / (len(configs) * len(seeds))


def family_grid(items: list[str]) -> list[dict]:
    """``["target_value=2,2.5", "utility_width=0.1,0.2"]`` -> the cartesian product as a list
    of env-kwarg dicts (values read as numbers where they are)."""
    axes = []
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key or not values:
            raise argparse.ArgumentTypeError(f"--family: expected KEY=V1,V2,..., got {item!r}")
        axes.append([(key, _number(v)) for v in values.split(",")])
    return [dict(combo) for combo in itertools.product(*axes)]


def _number(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def family_configs(env_id: str, args: argparse.Namespace) -> tuple[list[dict], str]:
    """The env configs of the family row and their description: the split ``--family-split``
    of :mod:`rlhf_envs.families` where the env has one, else the grid of ``--family``."""
    if args.family_split:
        try:
            from rlhf_envs import families

            configs = families.configs(env_id, args.family_split)
        except (ImportError, ValueError):
            configs = []
        if configs:
            return configs, f"family split {args.family_split}"
    configs = family_grid(args.family)
    names = ", ".join(",".join(f"{k}={v}" for k, v in c.items()) for c in configs)
    return configs, names


def family_table(env_id: str, args: argparse.Namespace, rounds: int) -> None:
    """Print seconds per agent-run over the family configs (measured on ``--family-rounds``
    rounds, scaled to ``rounds``)."""
    configs, names = family_configs(env_id, args)
    if not configs:
        return
    measured = min(rounds, args.family_rounds)
    seeds = list(range(args.seeds))
    print(f"family sweep: {len(configs)} configs x {args.seeds} seeds ({names})\n")
    print("| agent | s/agent-run (family) | x naive |")
    print("|---|---|---|")
    rows = {
        a: family_seconds(env_id, a, configs, seeds, measured, args.repeats) * rounds / measured
        for a in args.agents
    }
    base = rows.get(registry.REFERENCE, next(iter(rows.values())))
    for agent, sec in rows.items():
        print(f"| {agent} | {sec:.3f} | {sec / base:.2f}x |")
    if len(args.agents) > 1:
        both = sum(
            together_seconds(env_id, args.agents, seeds, measured, args.repeats, cfg)
            for cfg in configs
        )
        sec = both * rounds / measured / (len(configs) * len(seeds) * len(args.agents))
        mean = sum(rows.values()) / len(rows)
        print(f"| all agents, one program per config | {sec:.3f} | {sec / base:.2f}x |")
        print(f"\nagents sharing one program per config: {mean / sec:.2f}x the separate programs")
    print()


def _loadable(name: str) -> bool:
    """Whether ``name`` is an agent given as ``module:Class`` that loads."""
    try:
        return ":" in name and bool(registry.get(name))
    except ValueError:
        return False


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m baselines.bench", description=__doc__.split("\n")[0]
    )
    p.add_argument("--envs", nargs="*", default=list(rlhf_envs.ENV_IDS))
    p.add_argument("--agents", nargs="*", default=list(registry.names()))
    p.add_argument(
        "--seeds", type=positive_int, default=10, help="seeds per batched run (default 10)"
    )
    p.add_argument(
        "--rounds", type=positive_int, default=None, help="rounds (default: the env's YAML)"
    )
    p.add_argument(
        "--single-rounds",
        type=positive_int,
        default=200,
        help="rounds measured for the one-seed runs, scaled up (default 200)",
    )
    p.add_argument("--repeats", type=positive_int, default=3)
    p.add_argument("--steps", type=positive_int, default=2000, help="env steps for steps/s")
    p.add_argument(
        "--sb3",
        default="ppo",
        choices=("ppo", "sac", "a2c", "none"),
        help="SB3 algorithm whose wall time with and without FPO wrappers is compared "
        "(ppo, sac, a2c; 'none' to skip)",
    )
    p.add_argument("--sb3-rounds", type=positive_int, default=400, help="RM rounds per SB3 run")
    p.add_argument(
        "--sb3-profile",
        action="store_true",
        help="also print where one SB3 run's time goes per agent (the suite's parts: env step, "
        "RM retraining, reward wrapper, agent score, harness; SB3's: rollout loop, policy "
        "forward, gradient update), CPU seconds of --sb3-rounds rounds",
    )
    p.add_argument(
        "--family",
        nargs="*",
        default=["target_value=2.0,2.5,3.0", "utility_width=0.1,0.2"],
        metavar="KEY=V1,V2",
        help="env-kwarg grid of the family row (default: target_value x utility_width, 6 "
        "configs); no values to skip the row",
    )
    p.add_argument(
        "--family-split",
        choices=("train", "test"),
        default=None,
        help="measure the family row on this split of rlhf_envs.families where the env has "
        "one (else the --family grid)",
    )
    p.add_argument(
        "--float32",
        action="store_true",
        help="also time each white-box agent with the env's follower in float32 "
        "(env kwarg dtype=float32) beside float64",
    )
    p.add_argument(
        "--round-profile",
        action="store_true",
        help="also print where a white-box round's time goes per agent (the agent's score "
        "gradient and policy step, the env's scoring and RM retraining, the harness's "
        "recording), CPU ms per round over --profile-rounds rounds of --seeds seeds",
    )
    p.add_argument(
        "--profile-rounds",
        type=positive_int,
        default=200,
        help="rounds of the --round-profile runs (default 200)",
    )
    p.add_argument(
        "--family-rounds",
        type=positive_int,
        default=200,
        help="rounds measured per family run, scaled to the env's rounds (default 200)",
    )
    args = p.parse_args(argv)
    try:
        family_grid(args.family)
    except argparse.ArgumentTypeError as e:
        p.error(str(e))
    torch.set_num_threads(1)
    for flag, given, known, allowed in (
        ("agents", args.agents, registry.BUILTIN, sorted(registry.names())),
        ("envs", args.envs, rlhf_envs.ENV_IDS, rlhf_envs.ENV_IDS),
    ):
        unknown = [x for x in given if x not in known and not (flag == "agents" and _loadable(x))]
        if unknown:
            print(
                f"python -m baselines.bench: error: --{flag}: unknown {unknown}; allowed: {allowed}",
                file=sys.stderr,
            )
            return 2
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"torch threads: {torch.get_num_threads()}, repeats: {args.repeats} (medians)")
    print(f"load average (1, 5, 15 min): {load} on {os.cpu_count()} cores\n")
    for env_id in args.envs:
        rounds = args.rounds or load_defaults(env_id).get("rounds", 300)
        sps = env_steps_per_second(env_id, args.steps, args.repeats)
        print(f"## {env_id}: {sps:,.0f} env steps/s (single env, random actions)")
        if env_id in rlhf_envs.BLIND_SPOT_ENV_IDS:
            print(f"rounds per agent-run: {rounds}; batched runs use seeds 0-{args.seeds - 1}\n")
            white_box_table(env_id, args, rounds)
            if args.round_profile:
                round_profile_table(env_id, args)
            if args.family or args.family_split:
                family_table(env_id, args, rounds)
        else:
            print("no white-box agents on this env (SB3 agents only)\n")
        discrete = isinstance(gym.make(env_id).action_space, gym.spaces.Discrete)
        if args.sb3 == "sac" and discrete:
            print("SAC needs a Box action space: no SB3 rows on this env\n")
        elif args.sb3 != "none":
            print(
                f"{args.sb3.upper()} through reward wrappers, {args.sb3_rounds} RM rounds, 1 seed:\n"
            )
            print("| agent | s/run | x naive |")
            print("|---|---|---|")
            ref = registry.REFERENCE
            sb3_seconds(env_id, ref, args.sb3, 5, 1)  # warm-up: imports, first compile
            from baselines.sb3_runner import allowed_algos

            sb3_agents = [a for a in args.agents if args.sb3 in allowed_algos(a)]
            sb3_rows = {
                a: sb3_seconds(env_id, a, args.sb3, args.sb3_rounds, args.repeats)
                for a in sb3_agents
            }
            for a, sec in sb3_rows.items():
                print(f"| {a}+{args.sb3} | {sec:.2f} | {sec / sb3_rows[ref]:.2f}x |")
            print()
            if args.sb3_profile:
                sb3_profile_table(env_id, sb3_agents, args.sb3, args.sb3_rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
