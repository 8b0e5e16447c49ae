"""``RLHFBlindSpot-v0``: a continuous response scored by a linear reward model with blind spots."""

from __future__ import annotations

import contextlib
import copy
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv

from rlhf_envs import render as _render
from rlhf_envs.core import BlindSpotConfig, Oracle, RLHFCore


def _fresh_seed(np_random: np.random.Generator) -> int:
    return int(np_random.integers(0, 2**31 - 1))


class _BlindSpotMixin(Oracle):
    """Validation, info, queries (:class:`Oracle`) and white-box access of every RLHFCore env."""

    core: RLHFCore
    #: The error :meth:`_ask` raises, formatted with ``S`` and ``n`` (the core's ``dims``).
    ys_error = "ys must have shape ({S}, ..., {n}): experiments first, response last"

    def _info(self, proxy=None, true_u=None, updated: bool = False, y=None) -> dict[str, Any]:
        """The info dict: counters, the response's values (``proxy``, ``true_u``) and the norms of
        ``y`` (S, n); scalars for a single env, arrays per experiment for a vector env."""
        c, n = self.core, getattr(self, "num_envs", None)
        per = (lambda a: a.copy()) if n else (lambda a: a[0].item())
        info: dict[str, Any] = {
            "round": np.full(n, c.round) if n else c.round,
            "rm_updated": np.full(n, updated) if n else updated,
            **{col: per(v) for col, v in c.counters().items()},
        }
        if proxy is not None:
            info["true_utility"] = per(true_u)
            info["proxy_reward"] = per(proxy)
        if y is not None:
            k = c.config.signal_dims
            info["signal_norm"] = per(torch.linalg.vector_norm(y[:, :k], 2, -1).numpy())
            info["noise_norm"] = per(torch.linalg.vector_norm(y[:, k:], 2, -1).numpy())
        return info

    def _configure(self, env_cls: type, num_envs: int, kwargs: dict[str, Any]) -> spaces.Box:
        """Set ``config`` (``env_cls.defaults`` under ``kwargs``, a ``family`` expanded) and a core
        of ``num_envs`` experiments; return one action's Box."""
        from rlhf_envs.families import expand

        kwargs = expand(env_cls.__name__, kwargs)
        self.config = BlindSpotConfig.from_kwargs(**{**env_cls.defaults, **kwargs})
        self.core = RLHFCore(self.config, num_envs)
        b = np.float32(self.config.action_bound)
        return spaces.Box(-b, b, (self.config.dims,), np.float32)

    def _advance(self, actions: Any, shape: tuple[int, ...], bound: bool = True):
        """Check ``actions`` and submit them to the core: ``(y, proxy, true_u, updated)``."""
        y = self._check_actions(actions, shape, bound)
        out = self.core.step(y)
        self.last_response = y  # (S, d): the vectors the RM scored (read by reward wrappers)
        return (y, *out)

    def _start(self, seed: int | None) -> None:
        """Seed ``np_random``; start fresh experiments if seeded or never started."""
        gym.Env.reset(self, seed=seed)
        if seed is not None or not self.core.seeds:
            self.core.reset([seed if seed is not None else _fresh_seed(self.np_random)])

    def _check_actions(self, action: Any, shape: tuple[int, ...], bound: bool = True):
        """``action`` as (S, n) tensor: finite, of ``shape``, in the Box if ``bound``; or raise."""
        if not self.core.seeds:
            raise RuntimeError("call reset(seed=...) before step()")
        try:
            arr = np.asarray(action, dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise TypeError(f"action must be an array of numbers of shape {shape}: {e}") from e
        if arr.shape != shape:
            raise ValueError(f"action must have shape {shape}, got {arr.shape}")
        b = np.float32(self.config.action_bound) if bound else np.inf  # the Box's, as SB3's
        ok = np.isfinite(arr) & (np.abs(arr) <= b)
        if not ok.all():
            box = f" and in [-{b}, {b}] (the action space)" if bound else ""
            raise ValueError(f"action must be finite{box}, got {float(arr[~ok][0])}")
        return torch.from_numpy(arr.reshape(self.core.S, -1).copy()).to(self.core.dtype)

    @contextlib.contextmanager
    def frozen(self):
        """Evaluation mode (``with env.unwrapped.frozen():``; see the env's ``## Episodes``); on
        leaving, the env's own state (episode, prompt stream) is put back."""
        if not self.core.seeds:
            raise RuntimeError("call reset(seed=...) before frozen()")
        keep = ("core", "config", "_render_figure")
        saved = {k: copy.deepcopy(v) for k, v in vars(self).items() if k not in keep}
        was, self.core.frozen = self.core.frozen, True
        try:
            yield self
        finally:
            self.core.frozen = was
            vars(self).update(saved)

    @property
    def reward_model(self):
        """The reward model (functional, batched over experiments); see :attr:`rm_params`."""
        return self.core.reward_model

    @property
    def rm_params(self) -> dict[str, torch.Tensor]:
        """Current RM parameters, each with a leading experiment dimension. Do not modify."""
        return self.core.params

    def _ask(self, kind: str, ys: Any):
        """:meth:`RLHFCore.query` of ``ys`` (S, ..., n); a single env also takes (n,)."""
        y = torch.as_tensor(ys, dtype=self.core.dtype)
        if y.dim() == 1 and self.core.S == 1:
            y = y.unsqueeze(0)
        return self.core.query(kind, y, self.ys_error)

    # -- rendering (rlhf_envs.render draws; matplotlib is imported only then) ------------------
    def _rendered(self, y, proxy, true_u, extra: Any = None) -> None:
        """Keep the scored response for the frames; show the frame in ``"human"`` mode."""
        _render.remember(self, y, proxy, true_u, extra)
        if self.render_mode == "human":
            self.render()

    def render(self):
        """The current frame: an (H, W, 3) uint8 array in ``"rgb_array"`` mode; drawn into a
        matplotlib window in ``"human"`` mode (returns None). See :mod:`rlhf_envs.render`."""
        if self.render_mode is None:
            gym.logger.warn("render() called without a render_mode; pass one to gym.make")
            return None
        return _render.render(self, self._draw_frame)

    _draw_frame = _render.draw_vector

    def close(self, **kwargs: Any) -> None:
        _render.close(self)
        super().close(**kwargs)


class BlindSpotEnv(_BlindSpotMixin, gym.Env):
    """Iterative RLHF with a retrained reward model that has blind spots.

    ## Description
    Each step the agent submits one response ``y`` in ``R^d``. The reward is the score of the
    *current* reward model (RM), the proxy. Every ``samples_per_round`` steps the env's labeler
    labels that round's responses using the hidden true utility and the RM is retrained on its
    FIFO buffer of labelled responses, so the RM follows the policy (iterative RLHF). Defaults are
    the linear environment of Gauthier, Bach & Jordan (arXiv 2605.04266, Sec. 3): ``d = 50``,
    3 signal dims, ``r(y) = w . y`` with ``w0 = 1`` on the signal dims plus ``N(0, 0.1^2)`` on
    every dim, one labelled response per round, SGD step ``w <- w (1 - 1e-4) + 0.005 * 2 (U - w.y) y``.

    ## Action Space
    ``Box(-action_bound, action_bound, (dims,), float32)``: the response. A value outside the Box
    (NaN, 1e200), a wrong shape, or a failing step (the RM's update) raises, naming ``action``,
    and leaves the env unchanged.

    ## Observation Space
    ``Box(0, 1, (1,), float32)``, always ``[0.]``: there is no prompt (a context-free bandit).

    ## Rewards
    ``r_phi(y)``, the current RM's score, computed before the RM learns from ``y``.

    ## True utility vs feedback
    ``U(y) = utility_scale * exp(-utility_width * ||y - y*||^2)``, ``y* = target_value`` on the
    first ``signal_dims`` dims and 0 elsewhere. It is never the reward; it is reported in
    ``info["true_utility"]``. Feedback ``"rating"``: the label is ``U(y)`` (+ labeler bias,
    + ``N(0, label_noise^2)``) and the RM minimises the squared error. ``"preference"``: the label
    is ``sigmoid((U(y) - U(y_ref)) / temperature)`` (soft, or a Bernoulli draw of it) and the RM
    minimises the Bradley-Terry cross-entropy of ``sigmoid(r(y) - r(y_ref))``.

    ## Blind spots
    * RM initial error on every dim (``rm_init_noise``): a naive policy drifts along the error's
      noise dims where the RM overrates responses; retraining can correct it only where the policy
      goes ("alignment collapse").
    * ``blind_spot_bias`` on ``blind_spot_dims``: an extra initial overrating of chosen dims.
    * ``labeler_bias`` on ``labeler_bias_dims``: the labeler itself overrates those dims; no amount
      of retraining removes this one.

    ## Episodes
    One step per episode (``terminated=True``). ``reset(seed=s)`` starts a new experiment (fresh
    RM and buffer from ``s``); ``reset()`` keeps the RM. Inside ``with env.unwrapped.frozen():``
    steps are scored, with the truth in ``info``, but nothing is labelled, retrained or counted
    (SB3's ``evaluate_policy``). White-box calls before ``reset(seed=...)`` raise ``RuntimeError``.

    ## Info
    Every step: ``true_utility``, ``proxy_reward``, ``round`` (completed RM rounds),
    ``rm_updated`` (retrained after this step), ``labels_used``, ``oracle_queries`` /
    ``oracle_grad_queries`` (value / gradient queries), ``oracle_value_equivalents`` (+ ``d + 1``
    per gradient query), ``signal_norm`` / ``noise_norm`` (``||y[:signal_dims]||`` /
    ``||y[signal_dims:]||``). The reset info: the counters. The vector env: arrays per experiment.

    ## White-box access
    ``env.unwrapped.reward_model`` (score, tangent kernel, per-sample gradients, pure update),
    ``rm_params``, ``true_utility(ys)`` / ``query_labeler(ys)`` (counted), ``core``.

    ## Rendering
    ``render_mode="rgb_array"`` (a 960 x 360 uint8 frame) or ``"human"`` (a window): the truth
    and the RM around ``y*``, the recent responses, the scores per round (:mod:`rlhf_envs.render`).

    ## Arguments
    See :class:`rlhf_envs.core.BlindSpotConfig`. Unknown names raise ``TypeError``.

    ## Version History
    * v0: initial release.
    """

    metadata = {"render_modes": list(_render.RENDER_MODES), "render_fps": _render.RENDER_FPS}
    defaults: dict[str, Any] = {}  # BlindSpotConfig's defaults are the paper's linear env

    def __init__(self, render_mode: str | None = None, **kwargs: Any):
        _render.check_render_mode(render_mode, self.metadata["render_modes"])
        self.action_space = self._configure(type(self), 1, kwargs)
        self.observation_space = spaces.Box(0.0, 1.0, (1,), np.float32)
        self.render_mode = render_mode
        self._obs = np.zeros(1, dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        self._start(seed)
        return self._obs.copy(), self._info()

    def step(self, action):
        y, proxy, true_u, updated = self._advance(action, (self.config.dims,))
        if self.render_mode is not None:
            self._rendered(y, proxy, true_u)
        return self._obs.copy(), float(proxy[0]), True, False, self._info(proxy, true_u, updated, y)


class BlindSpotVectorEnv(_BlindSpotMixin, VectorEnv):
    """``num_envs`` independent blind-spot experiments as one batched tensor program.

    Made by ``gym.make_vec(id, num_envs, vectorization_mode="vector_entry_point")``. Experiment
    ``i`` reset with seed ``s`` gives exactly the single env's numbers. ``reset(seed=s)`` seeds
    experiment ``i`` with ``s + i`` (or pass a list of seeds). Every step ends an episode and the
    env resets itself in the same step (the RM persists), so every action counts.
    """

    metadata = {"autoreset_mode": AutoresetMode.SAME_STEP, "render_modes": []}
    single_env_cls = BlindSpotEnv

    def __init__(self, num_envs: int = 1, **kwargs: Any):
        if isinstance(num_envs, bool) or not isinstance(num_envs, int) or num_envs < 1:
            raise ValueError(f"num_envs must be an int >= 1, got {num_envs!r}")
        self.num_envs = num_envs
        self.single_action_space = self._configure(self.single_env_cls, num_envs, kwargs)
        b = np.float32(self.config.action_bound)
        self.single_observation_space = spaces.Box(0.0, 1.0, (1,), np.float32)
        self.action_space = spaces.Box(-b, b, (num_envs, self.config.dims), np.float32)
        self.observation_space = spaces.Box(0.0, 1.0, (num_envs, 1), np.float32)
        self._obs = np.zeros((num_envs, 1), dtype=np.float32)
        self._np_random = None

    def reset(self, *, seed: int | list[int] | None = None, options: dict | None = None):
        if isinstance(seed, (list, tuple)):
            self.core.reset(list(seed))
        elif seed is not None:
            self.core.reset([int(seed) + i for i in range(self.num_envs)])
        elif not self.core.seeds:
            rng = np.random.default_rng()
            self.core.reset([_fresh_seed(rng) for _ in range(self.num_envs)])
        return self._obs.copy(), self._info()

    def step(self, actions):
        y, proxy, true_u, updated = self._advance(actions, (self.num_envs, self.config.dims))
        infos = self._info(proxy, true_u, updated, y)
        ones = np.ones(self.num_envs, dtype=np.bool_)
        return self._obs.copy(), proxy.copy(), ones, ~ones, infos

    def submit(self, responses: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`step` for a tensor ``(num_envs, dims)``, returning only the proxy rewards and
        true utilities (:func:`agents.whitebox.learn_together` reads no more; the info costs a
        tenth of a run). The same checks and numbers, except that any finite response is taken
        (the paper's ``R^d``; the Box is for samplers)."""
        return self._advance(responses.detach(), (self.num_envs, self.config.dims), False)[1:3]
