"""What each agent of a :func:`agents.whitebox.learn_together` run sees of its own experiments
``lo:hi`` of the env: a :class:`SliceCore` and a :class:`SliceOracle`. Slices are views along the
experiment dimension, cut again only when the env replaces the tensor they come from, so an
agent's caches keyed by identity keep working.
"""

from __future__ import annotations

from typing import Any

import torch

from agents.sealed import FOLLOWER_ATTRS
from rlhf_envs.core import RLHFCore
from rlhf_envs.reward_models import FlatParams

#: follower tensors with one row per experiment (cut to the slice's rows)
_ROWS = frozenset({"buffer_y", "buffer_t", "references"})


class SliceCore:
    """Experiments ``lo:hi`` of an :class:`~rlhf_envs.core.RLHFCore`, read-only, for an agent.

    Has the attributes and reading methods that :class:`agents.sealed.FollowerView` lets an
    agent use (``params``, ``opt_state``, the buffer, ``references``, ``score``, ``push``,
    ``retained_after_push``, ``training_batch``, ...), cut to the slice.
    """

    def __init__(self, core: RLHFCore, lo: int, hi: int):
        if not 0 <= lo < hi <= core.S:
            raise ValueError(f"slice {lo}:{hi} must lie within the core's {core.S} experiments")
        self._core, self.lo, self.hi = core, lo, hi
        self.S = hi - lo
        self._cut: dict[str, tuple[Any, Any]] = {}  # name -> (source object, its slice)

    def _slice(self, name: str, source: Any, cut) -> Any:
        held = self._cut.get(name)
        if held is not None and held[0] is source:
            return held[1]
        part = cut(source)
        self._cut[name] = (source, part)
        return part

    def _rows(self, t: torch.Tensor) -> torch.Tensor:
        return t[self.lo : self.hi]

    # -- the follower's state, cut to the slice -------------------------------------------------
    @property
    def params(self):
        return self._slice("params", self._core.params, self._cut_params)

    def _cut_params(self, params: dict) -> dict:
        out = FlatParams({k: self._rows(v) for k, v in params.items()})
        flat = getattr(params, "flat", None)
        if flat is not None:
            out.flat = self._rows(flat)
        else:
            out = dict(out)
        return out

    @property
    def opt_state(self) -> dict:
        def cut(state: dict) -> dict:
            return {k: v if v.dim() == 0 else self._rows(v) for k, v in state.items()}

        return self._slice("opt_state", self._core.opt_state, cut)

    @property
    def seeds(self) -> list[int]:
        return self._core.seeds[self.lo : self.hi]

    def __getattr__(self, name: str) -> Any:
        if name in _ROWS:
            return self._slice(name, getattr(self._core, name), self._rows)
        if name in FOLLOWER_ATTRS:  # not cut above: the same for every experiment
            return getattr(self._core, name)
        raise AttributeError(f"SliceCore has no attribute {name!r}")

    # -- the follower's reading methods, on the slice ------------------------------------------
    def score(self, y: torch.Tensor) -> torch.Tensor:
        return self.reward_model.score(self.params, y)

    push = RLHFCore.push
    retained_after_push = RLHFCore.retained_after_push
    training_batch = RLHFCore.training_batch

    def charge(self, y: torch.Tensor, kind: str) -> None:
        """:meth:`RLHFCore.charge`, on this slice's counters only."""
        self._core.charge(y, kind, slice(self.lo, self.hi))


class SliceOracle:
    """The env's counted queries (:data:`agents.sealed.QUERIES`) on one :class:`SliceCore`'s
    experiments: responses of shape ``(S_slice, ..., d)``, charged to those experiments."""

    def __init__(self, env: Any, part: SliceCore):
        self._env, self._part = env, part

    def _query(self, ys: Any, fn, kind: str):
        y = torch.as_tensor(ys, dtype=self._part.dtype)
        S, n = self._part.S, self._part.config.dims
        if y.dim() < 2 or y.shape[0] != S or y.shape[-1] != n:
            raise ValueError(f"{self._env.ys_error.format(S=S, n=n)}; got {tuple(y.shape)}")
        y = y.detach()
        self._part.charge(y, kind)
        with torch.no_grad():
            return fn(y)

    def query_labeler(self, ys: Any) -> torch.Tensor:
        return self._query(ys, self._env.core.labeler_target, "labeler_values")

    def query_labeler_and_grad(self, ys: Any):
        return self._query(ys, self._env.core.labeler_target_and_grad, "labeler_grads")

    def true_utility(self, ys: Any) -> torch.Tensor:
        return self._query(ys, self._env.core.utility, "truth_values")

    def true_utility_and_grad(self, ys: Any):
        return self._query(ys, self._env.core.utility_and_grad, "truth_grads")
