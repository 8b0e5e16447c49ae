"""What an agent sees in a harness run: the follower without the truth, and counted queries.

Agents get the env's follower through :class:`FollowerView` (the reward model, its parameters,
optimiser state and labelled buffer, and the RM-side settings) and the labeler and the truth only
through :class:`Oracle` (counted value and gradient queries). Reading anything else (the hidden
utility, the labeler's internals, the env) raises :class:`SealedError` naming what was read and
what is allowed. In SB3 runs the agent's reward wrapper also removes the truth and the env's
diagnostics from ``info`` (they reach the recorder on the wrapper's ``audit`` channel); reading
them from an ``info`` raises :class:`SealedError` too.

This is a fence against mistakes and casual peeking, not a sandbox: Python code that wants to can
reach any object. Users calling ``gym.make`` directly see the truth in ``info`` as usual.
"""

from __future__ import annotations

import copy
from typing import Any

#: Follower attributes an agent may read.
FOLLOWER_ATTRS = frozenset(
    {
        "reward_model",
        "params",
        "opt_state",
        "buffer_y",
        "buffer_t",
        "buffer_len",
        "buffer_pos",
        "references",
        "reference",
        "S",
        "seeds",
        "round",
        "in_round",
        "dtype",
        "score",
        "push",
        "retained_after_push",
        "training_batch",
        "config",
    }
)
#: Env settings an agent may read: the reward model's and its training's, not the truth's or the
#: labeler's (``signal_dims``, ``target_value``, ``utility_*``, ``labeler_*``, ``label_noise``...).
CONFIG_ATTRS = frozenset(
    {
        "dims",
        "reward_model",
        "rm_hidden",
        "rm_init_noise",
        "rm_optimizer",
        "rm_lr",
        "rm_weight_decay",
        "rm_steps",
        "buffer_size",
        "samples_per_round",
        "labels_per_response",
        "feedback",
        "reference_response",
        "action_bound",
    }
)
#: ``info`` keys that tell the truth or the env's hidden structure (sealed from agents).
SEALED_INFO = frozenset(
    {"true_utility", "signal_norm", "noise_norm", "cluster", "in_blind_cluster"}
)
#: The env's counted queries (what :class:`Oracle` lets an agent call).
QUERIES = frozenset(
    {"query_labeler", "query_labeler_and_grad", "true_utility", "true_utility_and_grad"}
)


class SealedError(AttributeError, KeyError):
    """An agent read something sealed from it in a harness run."""

    def __str__(self) -> str:  # KeyError would print the repr
        return str(self.args[0])


class _View:
    __slots__ = ("_obj", "_allowed", "_what")

    def __init__(self, obj: Any, allowed: frozenset, what: str):
        object.__setattr__(self, "_obj", obj)
        object.__setattr__(self, "_allowed", allowed)
        object.__setattr__(self, "_what", what)

    def __getattr__(self, name: str) -> Any:
        if name not in self._allowed:
            raise SealedError(
                f"{self._what}.{name} is sealed from agents in harness runs; allowed: "
                f"{', '.join(sorted(self._allowed))}"
            )
        return getattr(self._obj, name)

    def __setattr__(self, name: str, value: Any) -> None:
        raise SealedError(f"{self._what} is read-only for agents")


class FollowerView(_View):
    """The env's follower as an agent may see it (see :data:`FOLLOWER_ATTRS`)."""

    __slots__ = ()

    def __init__(self, core: Any):
        super().__init__(core, FOLLOWER_ATTRS, "core")

    def __getattr__(self, name: str) -> Any:
        if name == "config":
            return _View(self._obj.config, CONFIG_ATTRS, "core.config")
        return super().__getattr__(name)


class Oracle(_View):
    """The env's counted queries, and nothing else of the env (see :data:`QUERIES`)."""

    __slots__ = ()

    def __init__(self, env: Any):
        super().__init__(env, QUERIES, "oracle")


class SealedInfo(dict):
    """An ``info`` dict without the truth; reading a sealed key raises :class:`SealedError`."""

    def __missing__(self, key: str) -> Any:
        if key in SEALED_INFO:
            raise SealedError(f'info["{key}"] is sealed from agents in harness runs')
        raise KeyError(key)

    def __deepcopy__(self, memo: dict) -> SealedInfo:
        # SB3's DummyVecEnv deep-copies every step's infos; the generic path for a dict
        # subclass (__reduce_ex__ and _reconstruct) is several times slower than this
        out = SealedInfo()
        memo[id(self)] = out
        for k, v in self.items():
            out[k] = v if type(v) in _ATOMIC else copy.deepcopy(v, memo)
        return out


_ATOMIC = frozenset({int, float, bool, str, type(None)})  # deepcopy returns these unchanged


def seal_info(info: dict) -> tuple[SealedInfo, dict]:
    """``info`` split into what agents may see and the sealed part (for the recorder)."""
    sealed = SealedInfo(info)  # the same keys in the same order, less the sealed ones
    audit = {k: sealed.pop(k) for k in SEALED_INFO if k in sealed}
    return sealed, audit
