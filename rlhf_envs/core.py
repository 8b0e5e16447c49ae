"""The iterative-RLHF follower shared by the blind-spot environments.

:class:`RLHFCore` holds ``S`` independent experiments (one per seed) as stacked tensors: the
reward model's parameters and optimiser state, the labelled FIFO buffer, the responses of the
current round, the labeler, per-experiment random generators and the label / oracle counters
(``S = 1`` for a single env, ``num_envs`` for the vector env). Each experiment has its own
generator, so experiment ``i`` with seed ``s`` gives the same numbers whatever else is batched.

One round, top to bottom (see :meth:`RLHFCore.step`):
  1. the policy submits ``samples_per_round`` responses, one per ``step``; each is scored by the
     *current* reward model (the proxy reward);
  2. the labeler labels the round's responses (rating or preference feedback);
  3. the labelled responses enter the FIFO buffer;
  4. the reward model takes ``rm_steps`` optimiser steps on the buffer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch

from rlhf_envs.reward_models import LinearRewardModel, MLPRewardModel, OptimizerConfig, RewardModel

FEEDBACK_TYPES = ("rating", "preference")
PREFERENCE_LABELS = ("soft", "sampled")
RM_TYPES = ("linear", "mlp")
OPTIMIZERS = ("sgd", "adam")
#: floating-point types of the follower's tensors (``float32``: opt-in, faster arithmetic)
DTYPES = ("float64", "float32")
#: the kinds of counted oracle query (the names agents declare in their ``reads``)
QUERY_KINDS = ("labeler_values", "labeler_grads", "truth_values", "truth_grads")
#: each kind's column in ``info`` and in a run's ``metrics.csv``
QUERY_COLUMNS = {
    "labeler_values": "labeler_value_queries",
    "labeler_grads": "labeler_grad_queries",
    "truth_values": "truth_value_queries",
    "truth_grads": "truth_grad_queries",
}


def int_sequence(name: str, value: Any) -> tuple[int, ...]:
    """A sequence of ints (bools and floats refused), or a TypeError naming ``name``."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise TypeError(f"{name} must be a sequence of ints, got {value!r}")
    items = list(value)
    if not all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in items):
        raise TypeError(f"{name} must be a sequence of ints, got {value!r}")
    return tuple(int(i) for i in items)


def check_int(obj: Any, name: str, lo: int, hi: int | None = None) -> None:
    """Validate ``obj.name`` as an int in ``[lo, hi]`` (bools refused) and store it as ``int``."""
    v = getattr(obj, name)
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(v).__name__} {v!r}")
    if v < lo or (hi is not None and v > hi):
        rng = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise ValueError(f"{name} must be {rng}, got {v}")
    setattr(obj, name, int(v))


def check_float(obj: Any, name: str, lo: float, strict: bool) -> None:
    """Validate ``obj.name`` as a finite number ``> lo`` (``strict``) or ``>= lo``; store a float."""
    v = getattr(obj, name)
    if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a number, got {type(v).__name__} {v!r}")
    try:
        v = float(v)
    except OverflowError:
        raise ValueError(f"{name} must be a finite number, got {v!r}") from None
    if not math.isfinite(v) or (v <= lo if strict else v < lo):
        op = ">" if strict else ">="
        raise ValueError(f"{name} must be finite and {op} {lo}, got {v}")
    setattr(obj, name, v)


def check_choice(obj: Any, name: str, allowed: tuple[str, ...]) -> None:
    v = getattr(obj, name)
    if not isinstance(v, str) or v not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {v!r}")


def check_dims(obj: Any, name: str, dims: int, default: tuple[int, ...] | None = None) -> None:
    """Validate ``obj.name`` (None: ``default``, or indices in ``[0, dims)``); store a tuple."""
    if getattr(obj, name) is None:
        setattr(obj, name, default)
    if getattr(obj, name) is None:
        return
    idx = int_sequence(name, getattr(obj, name))
    bad = [i for i in idx if not 0 <= i < dims]
    if bad:
        raise ValueError(f"{name} entries must be in [0, {dims - 1}], got {bad}")
    setattr(obj, name, idx)


@dataclass
class FollowerConfig:
    """The reward model, its training and the labeler's noise, shared by every env config.

    Attributes:
        rm_init_noise: initial RM error: std of the linear RM's noise / MLP's weights (>= 0).
        utility_scale: peak height of the true utility (> 0).
        reward_model: ``"linear"`` or ``"mlp"``, on the env's response vector.
        rm_hidden: hidden sizes of the MLP (two ints in [1, 4096]).
        rm_optimizer: ``"sgd"`` or ``"adam"``.
        rm_lr: reward-model learning rate (> 0).
        rm_weight_decay: L2 weight decay in ``torch.optim`` convention (>= 0).
        rm_steps: optimiser steps per round (1..10000).
        buffer_size: FIFO buffer of labelled responses (1..1e6).
        samples_per_round: responses labelled per round; the RM retrains after that many (1..1e6).
        labels_per_response: labels per response (1..1000; separate calls, own noise draws).
        label_noise: std of Gaussian noise on rating labels (>= 0).
        labeler_bias: the labeler's own error, a factor on the env's spurious dims (0: none).
    """

    rm_init_noise: float = 0.1
    utility_scale: float = 10.0
    reward_model: str = "linear"
    rm_hidden: tuple[int, int] = (32, 32)
    rm_optimizer: str = "sgd"
    rm_lr: float = 0.005
    rm_weight_decay: float = 0.02
    rm_steps: int = 1
    buffer_size: int = 1
    samples_per_round: int = 1
    labels_per_response: int = 1
    label_noise: float = 0.0
    labeler_bias: float = 0.0

    def __post_init__(self) -> None:
        check_float(self, "rm_init_noise", 0.0, strict=False)
        check_float(self, "utility_scale", 0.0, strict=True)
        check_choice(self, "reward_model", RM_TYPES)
        hidden = int_sequence("rm_hidden", self.rm_hidden)
        if len(hidden) != 2 or not all(1 <= h <= 4096 for h in hidden):
            raise ValueError(f"rm_hidden must be two ints in [1, 4096], got {self.rm_hidden!r}")
        self.rm_hidden = hidden
        check_choice(self, "rm_optimizer", OPTIMIZERS)
        check_float(self, "rm_lr", 0.0, strict=True)
        check_float(self, "rm_weight_decay", 0.0, strict=False)
        check_int(self, "rm_steps", 1, 10_000)
        check_int(self, "buffer_size", 1, 1_000_000)
        check_int(self, "samples_per_round", 1, 1_000_000)
        check_int(self, "labels_per_response", 1, 1000)
        check_float(self, "label_noise", 0.0, strict=False)
        check_float(self, "labeler_bias", -math.inf, strict=False)

    @classmethod
    def from_kwargs(cls, **kwargs: Any):
        """Build from keyword arguments, rejecting unknown names with a clear message."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise TypeError(f"unknown argument(s) {unknown}; allowed: {sorted(known)}")
        return cls(**kwargs)

    def follower_settings(self) -> dict[str, Any]:
        """``{name: value}`` of the :class:`FollowerConfig` fields (to build the core's config)."""
        return {f.name: getattr(self, f.name) for f in fields(FollowerConfig)}


@dataclass
class BlindSpotConfig(FollowerConfig):
    """Settings of a blind-spot environment (defaults: the paper's linear environment).

    Plus the follower fields of :class:`FollowerConfig`, with its defaults (the paper's rule
    ``w <- w (1 - 1e-4) + ...`` is SGD with lr 0.005 and weight decay 0.02).

    Attributes:
        dims: response dimension ``d`` (>= 1).
        signal_dims: the true utility peaks on the first ``signal_dims`` dims (1..dims).
        blind_spot_dims: dims on which the reward model starts with an extra bias.
        blind_spot_bias: that bias (added to ``w0``; for the MLP a trainable linear skip term).
        target_value: the utility peak ``y*`` has this value on the signal dims, 0 elsewhere.
        utility_width: ``width`` in ``U(y) = utility_scale * exp(-width * ||y - y*||^2)`` (> 0).
        feedback: ``"rating"`` (squared loss) or ``"preference"`` (vs ``reference_response``).
        preference_labels: ``"soft"`` (probability labels) or ``"sampled"`` (Bernoulli draws).
        temperature: Bradley-Terry temperature of the labeler (> 0).
        labeler_bias_dims: dims the labeler overrates (default: the last dim).
        reference_response: the response preferences are judged against (default: zeros).
        action_bound: half-width of the action Box, outside which ``step`` refuses responses.
        dtype: floating-point type of the follower: ``"float64"`` (default; every committed
            number) or ``"float32"`` (opt-in, ~2.7x faster RM on a CPU; the float64 random streams
            rounded, so other numbers than float64 runs).
    """

    dims: int = 50
    signal_dims: int = 3
    blind_spot_dims: tuple[int, ...] = ()
    blind_spot_bias: float = 0.0
    target_value: float = 2.0
    utility_width: float = 0.3
    feedback: str = "rating"
    preference_labels: str = "soft"
    temperature: float = 1.0
    labeler_bias_dims: tuple[int, ...] | None = None
    reference_response: tuple[float, ...] | None = None
    action_bound: float = 10.0
    dtype: str = "float64"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int(self, "dims", 1, 100_000)
        check_int(self, "signal_dims", 1, self.dims)
        check_float(self, "blind_spot_bias", -math.inf, strict=False)
        check_float(self, "target_value", -math.inf, strict=False)
        check_float(self, "utility_width", 0.0, strict=True)
        check_choice(self, "feedback", FEEDBACK_TYPES)
        check_choice(self, "preference_labels", PREFERENCE_LABELS)
        check_float(self, "temperature", 0.0, strict=True)
        check_float(self, "action_bound", 0.0, strict=True)
        check_choice(self, "dtype", DTYPES)
        check_dims(self, "blind_spot_dims", self.dims)
        check_dims(self, "labeler_bias_dims", self.dims, default=(self.dims - 1,))
        if self.reference_response is not None:
            msg = f"reference_response must be {self.dims} finite numbers"
            try:
                ref = tuple(float(x) for x in self.reference_response)
            except (TypeError, ValueError, OverflowError):
                raise ValueError(f"{msg}, got {self.reference_response!r}") from None
            if len(ref) != self.dims or not all(math.isfinite(x) for x in ref):
                raise ValueError(f"{msg}, got {self.reference_response!r}")
            self.reference_response = ref


#: what :meth:`RLHFCore.reset` sets: the experiments' state (read before it: one clear error)
STATE = ("generators", "params", "opt_state", "buffer_y", "buffer_t", "buffer_len", "buffer_pos",
         "round_y", "in_round", "round", "labels_used", "queries")  # fmt: skip


def make_reward_model(c: BlindSpotConfig, mean: torch.Tensor, skip: torch.Tensor | None):
    """The reward model ``c`` describes: linear around ``mean``, or an MLP with skip ``skip``."""
    opt = OptimizerConfig(c.rm_optimizer, c.rm_lr, c.rm_weight_decay)
    dtype = getattr(torch, c.dtype)
    if c.reward_model == "linear":
        return LinearRewardModel(c.dims, opt, mean, c.rm_init_noise, dtype=dtype)
    return MLPRewardModel(c.dims, opt, c.rm_hidden, c.rm_init_noise, skip_init=skip, dtype=dtype)


class RLHFCore:
    """``S`` independent iterative-RLHF followers (reward model + labeler + buffer).

    Envs whose responses are not points of ``R^d`` map each to a fixed-length feature vector
    ("the response") and subclass the core to redefine :meth:`utility`,
    :meth:`utility_and_grad` and :meth:`labeler_bias_and_grad` on it. ``reward_model`` passes
    a prebuilt reward model instead of the one ``config`` describes.
    """

    #: while set, :meth:`step` only scores (the envs' ``frozen()`` evaluation mode)
    frozen = False

    def __init__(
        self,
        config: BlindSpotConfig,
        num_experiments: int = 1,
        reward_model: RewardModel | None = None,
    ):
        self.config = c = config
        self.S = int(num_experiments)
        self.dtype = getattr(torch, c.dtype)
        self.y_star = torch.zeros(c.dims, dtype=self.dtype)
        self.y_star[: c.signal_dims] = c.target_value
        self.reference = torch.tensor(c.reference_response or (0.0,) * c.dims, dtype=self.dtype)
        self.references = self.reference.expand(self.S, c.dims)
        self.labeler_direction = torch.zeros(c.dims, dtype=self.dtype)
        if c.labeler_bias:
            self.labeler_direction[list(c.labeler_bias_dims)] = 1.0
        if reward_model is None:
            blind = torch.zeros(c.dims, dtype=torch.float64)  # the RM applies its own dtype
            if c.blind_spot_dims:
                blind[list(c.blind_spot_dims)] = c.blind_spot_bias
            mean = blind.clone()
            mean[: c.signal_dims] += 1.0
            skip = blind if (c.blind_spot_dims and c.blind_spot_bias) else None
            reward_model = make_reward_model(c, mean, skip)
        self.reward_model: RewardModel = reward_model
        self.seeds: list[int] = []

    def __getattr__(self, name: str) -> Any:
        if name in STATE:  # only called for what is not set: before the first reset
            raise RuntimeError(f"no experiment yet ({name} is unset): call reset(seed=...) first")
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # -- experiment lifecycle -------------------------------------------------------------------
    def reset(self, seeds: list[int]) -> None:
        """Start fresh experiments: new RM, empty buffer, zero counters."""
        if len(seeds) != self.S:
            raise ValueError(f"need {self.S} seeds, got {len(seeds)}")
        self.seeds = [int(s) for s in seeds]
        self.generators = [torch.Generator().manual_seed(s) for s in self.seeds]
        self.params = self.reward_model.init_params(self.generators)
        self.opt_state = self.reward_model.init_opt_state(self.params)
        c = self.config
        self.buffer_y = torch.zeros(self.S, c.buffer_size, c.dims, dtype=self.dtype)
        self.buffer_t = torch.zeros(self.S, c.buffer_size, dtype=self.dtype)
        self.buffer_len = 0
        self.buffer_pos = 0
        self.round_y = torch.zeros(self.S, c.samples_per_round, c.dims, dtype=self.dtype)
        self.in_round = 0
        self.round = 0
        self.labels_used = np.zeros(self.S, dtype=np.int64)
        #: counted oracle queries per experiment, one counter per kind (:data:`QUERY_KINDS`)
        self.queries = {kind: np.zeros(self.S, dtype=np.int64) for kind in QUERY_KINDS}

    # -- the hidden truth and the labeler -------------------------------------------------------
    def utility(self, y: torch.Tensor) -> torch.Tensor:
        """Hidden true utility, uncounted (for the env itself and the harness's audit)."""
        c = self.config
        sq = ((y - self.y_star) ** 2).sum(-1)
        return c.utility_scale * torch.exp(-c.utility_width * sq)

    def utility_and_grad(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(U(y), grad_y U(y))`` in closed form, uncounted."""
        u = self.utility(y)
        return u, (-2.0 * self.config.utility_width * u).unsqueeze(-1) * (y - self.y_star)

    def labeler_bias_and_grad(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The labeler's own error ``b(y) = labeler_bias * sum(y[labeler_bias_dims])`` (added to
        ``U(y)``) and ``grad_y b``, uncounted; None if unbiased."""
        if not self.config.labeler_bias:
            return None
        c = self.config.labeler_bias
        return c * (y @ self.labeler_direction), c * self.labeler_direction

    def labeler_target_and_grad(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`labeler_target` and its gradient in ``y``, uncounted."""
        u, g = self.utility_and_grad(y)
        bias = self.labeler_bias_and_grad(y)
        if bias is not None:
            u, g = u + bias[0], g + bias[1]
        if self.config.feedback == "rating":
            return u, g
        p = torch.sigmoid((u - self.labeler_utility(self.reference)) / self.config.temperature)
        return p, (p * (1 - p) / self.config.temperature).unsqueeze(-1) * g

    def labeler_utility(self, y: torch.Tensor) -> torch.Tensor:
        """What the labeler believes: true utility plus its own bias, uncounted."""
        u = self.utility(y)
        bias = self.labeler_bias_and_grad(y)
        return u if bias is None else u + bias[0]

    def labeler_target(self, y: torch.Tensor) -> torch.Tensor:
        """The labeler's noiseless verdict: rating value, or P(y beats the reference)."""
        lab = self.labeler_utility(y)
        if self.config.feedback == "rating":
            return lab
        ref = self.labeler_utility(self.reference)
        return torch.sigmoid((lab - ref) / self.config.temperature)

    def query(self, kind: str, ys: Any, ys_error: str, rows: slice = slice(None)):
        """Oracle query ``kind`` (:data:`QUERY_KINDS`) of the responses ``ys`` (S_rows, ..., d) of
        the experiments ``rows``, detached (no gradient leaks through a value) and counted there,
        one per response (a ``*_grads`` query: the value and its d-dim gradient); another shape
        raises ``ValueError(ys_error)``, formatted with ``S`` and ``n``."""
        y = torch.as_tensor(ys, dtype=self.dtype).detach()
        S, n = len(range(*rows.indices(self.S))), self.config.dims
        if y.dim() < 2 or y.shape[0] != S or y.shape[-1] != n:
            raise ValueError(f"{ys_error.format(S=S, n=n)}; got {tuple(y.shape)}")
        fn = {
            "labeler_values": self.labeler_target,
            "labeler_grads": self.labeler_target_and_grad,
            "truth_values": self.utility,
            "truth_grads": self.utility_and_grad,
        }[kind]
        self.queries[kind][rows] += math.prod(y.shape[1:-1])
        with torch.no_grad():
            return fn(y)

    def counters(self) -> dict[str, np.ndarray]:
        """Labels used and counted queries per experiment, named as ``info`` and a run's
        ``metrics.csv`` name them: value / gradient queries of the labeler and the truth together,
        value equivalents (``d + 1`` per gradient query: what forward differences cost), then one
        counter per kind (:data:`QUERY_COLUMNS`)."""
        q = self.queries
        values = q["labeler_values"] + q["truth_values"]
        grads = q["labeler_grads"] + q["truth_grads"]
        return {
            "labels_used": self.labels_used,
            "oracle_queries": values,
            "oracle_grad_queries": grads,
            "oracle_value_equivalents": values + (self.config.dims + 1) * grads,
            **{col: q[kind] for kind, col in QUERY_COLUMNS.items()},
        }

    # -- one response ---------------------------------------------------------------------------
    def score(self, y: torch.Tensor) -> torch.Tensor:
        return self.reward_model.score(self.params, y)

    def step(self, y: torch.Tensor) -> tuple[np.ndarray, np.ndarray, bool]:
        """Submit one response per experiment, ``y`` (S, d): (proxy reward, true utility, whether
        the RM was retrained), each per experiment. While :attr:`frozen` it only scores. A step
        that raises (e.g. ``FloatingPointError``) leaves every experiment as it was."""
        with torch.no_grad():
            proxy = self.reward_model.score(self.params, y.unsqueeze(1))[:, 0]
            true_u = self.utility(y)
            if self.frozen:
                return proxy.numpy(), true_u.numpy(), False
            if self.in_round + 1 < self.config.samples_per_round:
                self.round_y[:, self.in_round] = y
                self.in_round += 1
                return proxy.numpy(), true_u.numpy(), False
            # every attribute of STATE is replaced, not changed in place, by the retraining
            saved = {k: getattr(self, k) for k in STATE}
            streams = [g.get_state() for g in self.generators]
            try:
                ys = torch.cat([self.round_y[:, :-1], y[:, None].to(self.dtype)], 1)
                self._label_and_retrain(ys)
            except BaseException:
                vars(self).update(saved)
                for g, state in zip(self.generators, streams, strict=True):
                    g.set_state(state)
                raise
        return proxy.numpy(), true_u.numpy(), True

    def _label_and_retrain(self, ys: torch.Tensor) -> None:
        """Label the round's responses ``ys`` (S, samples_per_round, d), buffer them, retrain."""
        c = self.config
        if c.labels_per_response > 1:
            ys = ys.repeat_interleave(c.labels_per_response, dim=1)
        target = self.labeler_target(ys)
        if c.feedback == "rating" and c.label_noise > 0:
            target = target + c.label_noise * self._draw(torch.randn, ys.shape[1])
        elif c.feedback == "preference" and c.preference_labels == "sampled":
            target = (self._draw(torch.rand, ys.shape[1]) < target).to(self.dtype)
        self.buffer_y, self.buffer_t, self.buffer_pos, self.buffer_len = self.push(ys, target)
        for _ in range(c.rm_steps):
            self.params, self.opt_state = self.reward_model.update(
                self.params, self.opt_state, *self.training_batch(), c.feedback, self.references
            )
        flat = getattr(self.params, "flat", None)  # one check of all parameters when flat
        for name, p in self.params.items() if flat is None or not flat.isfinite().all() else ():
            finite = torch.isfinite(p).reshape(self.S, -1).all(1)
            if not finite.all():
                bad = [s for s, ok in zip(self.seeds, finite, strict=True) if not ok]
                raise FloatingPointError(
                    f"reward model parameter {name!r} became NaN/inf at round {self.round} "
                    f"(seeds {bad}); lower rm_lr or bound the responses"
                )
        self.in_round = 0
        self.round += 1
        self.labels_used = self.labels_used + ys.shape[1]

    def _draw(self, sample, n: int) -> torch.Tensor:
        """``n`` draws of ``sample`` (``torch.randn`` / ``torch.rand``) per experiment, (S, n)."""
        draws = [sample(n, generator=g, dtype=torch.float64) for g in self.generators]
        return torch.stack(draws).to(self.dtype)  # float64 streams, rounded if float32

    def push(self, ys: torch.Tensor, targets: torch.Tensor):
        """``(buffer_y, buffer_t, next_position, length)`` after pushing ``ys`` (S, n, d) with
        ``targets`` (S, n); pure (differentiable in both)."""
        size = self.config.buffer_size
        by, bt = self.buffer_y.clone(), self.buffer_t.clone()
        pos, length = self.buffer_pos, self.buffer_len
        for j in range(ys.shape[1]):
            by[:, pos] = ys[:, j]
            bt[:, pos] = targets[:, j]
            pos = (pos + 1) % size
            length = min(length + 1, size)
        return by, bt, pos, length

    def retained_after_push(self, n_new: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The labelled responses and targets still in the buffer after ``n_new`` pushes."""
        size = self.config.buffer_size
        keep = min(self.buffer_len, size - n_new)
        if keep <= 0:
            return self.buffer_y[:, :0], self.buffer_t[:, :0]
        if self.buffer_len < size:
            idx = torch.arange(self.buffer_len - keep, self.buffer_len)
        else:  # full: the oldest entry sits at buffer_pos
            idx = (torch.arange(size - keep, size) + self.buffer_pos) % size
        return self.buffer_y[:, idx], self.buffer_t[:, idx]

    def training_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The labelled responses and targets the RM trains on (the filled part of the buffer)."""
        return self.buffer_y[:, : self.buffer_len], self.buffer_t[:, : self.buffer_len]


class Oracle:
    """Counted oracle queries of responses ``ys`` (S, ..., d), each answered by ``ask(kind, ys)``
    (:meth:`RLHFCore.query`): an env's own queries (its ``_ask``), or an agent's, answered on the
    env's side (:func:`agents.follower.answer`), which refuses a kind the agent did not declare."""

    def __init__(self, ask):
        self._ask = ask

    def true_utility(self, ys: Any) -> torch.Tensor:
        """The hidden true utility of ``ys``, a value query (``info["oracle_queries"]``) with no
        gradient (:meth:`true_utility_and_grad` is a query)."""
        return self._ask("truth_values", ys)

    def true_utility_and_grad(self, ys: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`true_utility` and its gradient in ``ys``: a gradient query (``d + 1`` values)."""
        return self._ask("truth_grads", ys)

    def query_labeler(self, ys: Any) -> torch.Tensor:
        """The labeler's noiseless verdict (rating, or P(y beats reference)): what the RM is
        trained toward; a value query, like :meth:`true_utility`."""
        return self._ask("labeler_values", ys)

    def query_labeler_and_grad(self, ys: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`query_labeler` and its gradient in ``ys``: a gradient query."""
        return self._ask("labeler_grads", ys)
