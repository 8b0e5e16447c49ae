"""``RLHFContextual-v0``: a contextual bandit whose labeler is biased in one region of prompt space."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from rlhf_envs import render as _render
from rlhf_envs.blind_spot import _BlindSpotMixin
from rlhf_envs.core import (
    BlindSpotConfig,
    FollowerConfig,
    RLHFCore,
    check_dims,
    check_float,
    check_int,
    make_reward_model,
)


@dataclass
class ContextualConfig(FollowerConfig):
    """Settings of :class:`ContextualEnv`.

    Plus the follower fields of :class:`FollowerConfig` (the RM works on ``concat(x, y)``), with
    the defaults below. ``reward_model="linear"`` (``w . [x, y]``, zero-mean initial weights of
    std ``rm_init_noise``) cannot fit a peaked utility: a capacity blind spot.

    Attributes:
        prompt_dims: prompt dimension ``p`` (1..256).
        dims: response dimension ``d`` (1..256).
        n_clusters: number of prompt clusters (1..2p), centred at ``+-cluster_radius * e_k``.
        cluster_radius: distance of the cluster centres from the origin (> 0).
        cluster_std: std of the prompts around their centre (>= 0).
        target_std: per-cluster utility peaks ``y*_k`` are drawn ``N(0, target_std^2 I_d)`` (> 0).
        task_seed: seed of those peaks (0..2^31-1), fixed across experiments (not ``reset``'s).
        utility_width: ``width`` in ``U = utility_scale * exp(-width * ||y - y*(x)||^2)`` (> 0).
        blind_cluster: the cluster where the labeler is biased (0..n_clusters-1).
        labeler_bias_dims: the spurious response dims (default: the last one).
        action_bound: half-width of the action Box (> 0); responses outside it are refused.
    """

    labeler_bias: float = 5.0
    reward_model: str = "mlp"
    rm_optimizer: str = "adam"
    rm_lr: float = 1e-2
    rm_weight_decay: float = 1e-3
    rm_steps: int = 2
    buffer_size: int = 64
    samples_per_round: int = 8
    prompt_dims: int = 4
    dims: int = 4
    n_clusters: int = 2
    cluster_radius: float = 3.0
    cluster_std: float = 0.5
    target_std: float = 1.0
    task_seed: int = 0
    utility_width: float = 0.1
    blind_cluster: int = 0
    labeler_bias_dims: tuple[int, ...] | None = None
    action_bound: float = 10.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int(self, "prompt_dims", 1, 256)
        check_int(self, "dims", 1, 256)
        check_int(self, "n_clusters", 1, 2048)
        if self.n_clusters > 2 * self.prompt_dims:
            raise ValueError(
                f"n_clusters must be at most 2 * prompt_dims = {2 * self.prompt_dims} (the "
                f"centres are +-cluster_radius on the prompt axes), got n_clusters="
                f"{self.n_clusters} with prompt_dims={self.prompt_dims}"
            )
        check_float(self, "cluster_radius", 0.0, strict=True)
        check_float(self, "cluster_std", 0.0, strict=False)
        check_float(self, "target_std", 0.0, strict=True)
        check_int(self, "task_seed", 0, 2**31 - 1)
        check_float(self, "utility_width", 0.0, strict=True)
        check_int(self, "blind_cluster", 0, self.n_clusters - 1)
        check_dims(self, "labeler_bias_dims", self.dims, default=(self.dims - 1,))
        check_float(self, "action_bound", 0.0, strict=True)

    def core_config(self) -> BlindSpotConfig:
        """The follower's settings on the vectors ``z = concat(x, y)`` (``dims = p + d``)."""
        p = self.prompt_dims
        return BlindSpotConfig(
            dims=p + self.dims,
            signal_dims=1,
            utility_width=self.utility_width,
            feedback="rating",
            labeler_bias_dims=tuple(p + i for i in self.labeler_bias_dims),
            action_bound=self.action_bound,
            **self.follower_settings(),
        )


class ContextualCore(RLHFCore):
    """The follower on ``z = concat(x, y)``: prompt first, response last (see the env)."""

    def __init__(self, config: ContextualConfig, num_experiments: int = 1):
        core_cfg = config.core_config()
        zero = torch.zeros(core_cfg.dims, dtype=torch.float64)  # the linear RM's initial mean
        super().__init__(core_cfg, num_experiments, make_reward_model(core_cfg, zero, None))
        self.env_config = c = config
        eye = torch.eye(c.prompt_dims, dtype=torch.float64)
        self.centres = (c.cluster_radius * torch.cat([eye, -eye]))[: c.n_clusters]
        g = torch.Generator().manual_seed(c.task_seed)
        self.targets = c.target_std * torch.randn(
            c.n_clusters, c.dims, generator=g, dtype=self.dtype
        )

    def cluster(self, z: torch.Tensor) -> torch.Tensor:
        """Cluster of each prompt ``z[..., :p]``: the nearest centre (ties to the lower index)."""
        x = z[..., : self.env_config.prompt_dims]
        return ((x.unsqueeze(-2) - self.centres) ** 2).sum(-1).argmin(-1)

    def _utility(self, z: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(U(z), y - y*_k)`` for the clusters ``k`` of the prompts."""
        c, p = self.env_config, self.env_config.prompt_dims
        diff = z[..., p:] - self.targets[k]
        return c.utility_scale * torch.exp(-c.utility_width * (diff**2).sum(-1)), diff

    def utility_and_grad(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(U(z), grad_z U(z))``, uncounted; the gradient in the prompt part is 0."""
        c, p = self.env_config, self.env_config.prompt_dims
        u, diff = self._utility(z, self.cluster(z))
        g_y = (-2.0 * c.utility_width * u).unsqueeze(-1) * diff
        return u, torch.cat([torch.zeros_like(z[..., :p]), g_y], dim=-1)

    def utility(self, z: torch.Tensor) -> torch.Tensor:
        """``U(x, y) = scale * exp(-width * ||y - y*_(cluster(x))||^2)``, uncounted."""
        return self._utility(z, self.cluster(z))[0]

    def _blind_factor(self, k: torch.Tensor) -> torch.Tensor:
        """``labeler_bias`` where the cluster ``k`` is the blind one, 0 elsewhere."""
        return self.config.labeler_bias * (k == self.env_config.blind_cluster).to(self.dtype)

    def labeler_bias_and_grad(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``labeler_bias * sum(y[labeler_bias_dims])`` in the blind cluster, 0 elsewhere."""
        if not self.config.labeler_bias:
            return None
        b = self._blind_factor(self.cluster(z))
        return b * (z @ self.labeler_direction), b.unsqueeze(-1) * self.labeler_direction

    def labeler_utility(self, z: torch.Tensor) -> torch.Tensor:
        """``U(z)`` plus the labeler's bias, uncounted (the clusters found once for both)."""
        k = self.cluster(z)
        u = self._utility(z, k)[0]
        if not self.config.labeler_bias:
            return u
        return u + self._blind_factor(k) * (z @ self.labeler_direction)


class ContextualEnv(_BlindSpotMixin, gym.Env):
    """Iterative RLHF on prompts: the labeler is biased in one region of prompt space only.

    ## Description
    A contextual bandit. Each episode the env draws a prompt ``x`` in ``R^p`` from a mixture of
    ``n_clusters`` Gaussian clusters (uniform weights, centres ``+-cluster_radius`` on the
    axes, std ``cluster_std``); the agent answers with one response ``y`` in ``R^d``, scored,
    labelled and learnt from as in ``RLHFBlindSpot-v0`` by an MLP RM on ``z = concat(x, y)``,
    which ``env.unwrapped.core`` treats as "the response".

    ## Action Space
    ``Box(-action_bound, action_bound, (dims,), float32)``: the response ``y``; refused as in
    ``RLHFBlindSpot-v0`` (``env.unwrapped.frozen()`` too: evaluation without training).

    ## Observation Space
    ``Box(-inf, inf, (prompt_dims,), float32)``: the prompt ``x`` (what the RM sees, as float64).

    ## Rewards
    ``r_phi(x, y)``, the current RM's score, computed before the RM learns from ``(x, y)``.

    ## True utility vs feedback
    ``U(x, y) = utility_scale * exp(-utility_width * ||y - y*_k||^2)`` with ``k`` the cluster of
    ``x`` (its nearest centre, ``info["cluster"]``) and ``y*_k ~ N(0, target_std^2 I)`` fixed by
    ``task_seed`` and hidden from the agent, in ``info["true_utility"]``. Feedback is a rating
    (the labeler's value + ``N(0, label_noise^2)``, squared error); preferences would need a
    reference response per prompt, and the shared follower has one.

    ## Blind spots
    * Local labeler bias: for prompts of cluster ``blind_cluster`` (default 0) the labeler adds
      ``labeler_bias * sum(y[labeler_bias_dims])`` (default ``5 * y[d-1]``) to ``U``; everywhere
      else its labels are exactly ``U``. At the default bias the labeler's own optimum on those
      prompts is the edge of the action box (``U ~ 0``). With the defaults (half of the prompts
      blind) and SB3 PPO (2 seeds, 1000 rounds) a naive policy's true utility rose to ~5.3, then
      fell to ~4.3 while the blind cluster went from ~4 to 0 and the other rose to ~8.5.
    * RM initial error and capacity: the MLP starts random (``rm_init_noise``) and learns only
      where the policy's (prompt, response) pairs land; ``reward_model="linear"`` cannot represent
      a peaked utility at all.

    ## Episodes
    As ``RLHFBlindSpot-v0``; the prompt stream starts from ``s``, ``reset()`` draws the next.

    ## Info
    The keys of ``RLHFBlindSpot-v0`` (``signal_norm`` = ``|x[0]|`` and ``noise_norm`` the norm of
    the rest of ``z``), plus ``cluster`` (the prompt's) and ``in_blind_cluster`` (``cluster ==
    blind_cluster``), which the reset info has too, for the new prompt.

    ## White-box access
    ``env.unwrapped.core`` (a :class:`ContextualCore`), ``reward_model``, ``rm_params``,
    ``true_utility(zs)`` / ``query_labeler(zs)`` (counted, on ``concat(x, y)`` of shape
    ``(1, ..., p + d)``), ``prompt`` (the current ``x``), ``last_response`` (the last ``z`` scored).

    ## Rendering
    ``render_mode="rgb_array"`` / ``"human"``: per prompt cluster (up to 3), the truth and the RM
    around the cluster's target, its recent responses and scores (:mod:`rlhf_envs.render`).

    ## Arguments
    See :class:`ContextualConfig`; bad names and values raise, naming the argument.

    ## Version History
    * v0: initial release.
    """

    metadata = {"render_modes": list(_render.RENDER_MODES), "render_fps": _render.RENDER_FPS}
    ys_error = (
        "ys must be vectors concat(x, y) of shape ({S}, ..., {n}): experiments first, "
        "prompt then response last"
    )

    def __init__(self, render_mode: str | None = None, **kwargs: Any):
        _render.check_render_mode(render_mode, self.metadata["render_modes"])
        self.config = ContextualConfig.from_kwargs(**kwargs)
        self.core = ContextualCore(self.config, 1)
        c = self.config
        b = np.float32(c.action_bound)
        self.action_space = spaces.Box(-b, b, (c.dims,), np.float32)
        self.observation_space = spaces.Box(-np.inf, np.inf, (c.prompt_dims,), np.float32)
        self.render_mode = render_mode
        self.prompt = np.zeros(c.prompt_dims, dtype=np.float32)
        self._centres = self.core.centres.numpy()  # a view, for drawing prompts
        self._cluster = 0
        self.last_response: torch.Tensor | None = None

    def _info(self, proxy=None, true_u=None, updated: bool = False, y=None) -> dict[str, Any]:
        info = super()._info(proxy, true_u, updated, y)
        info["cluster"] = self._cluster
        info["in_blind_cluster"] = self._cluster == self.config.blind_cluster
        return info

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        self._start(seed)
        c = self.config
        k = int(self.np_random.integers(c.n_clusters))
        noise = self.np_random.standard_normal(c.prompt_dims)
        self.prompt = (self._centres[k] + c.cluster_std * noise).astype(np.float32)
        self._cluster = int(self.core.cluster(torch.from_numpy(self.prompt.astype(np.float64))))
        self.last_response = None
        return self.prompt.copy(), self._info()

    def step(self, action):
        y = self._check_actions(action, (self.config.dims,))
        x = torch.from_numpy(self.prompt.astype(np.float64)).unsqueeze(0)
        z = torch.cat([x, y], dim=-1)
        proxy, true_u, updated = self.core.step(z)
        self.last_response = z  # (1, p + d): the vector the RM scored
        if self.render_mode is not None:
            self._rendered(z, proxy, true_u, self._cluster)
        info = self._info(proxy, true_u, updated, z)
        return self.prompt.copy(), float(proxy[0]), True, False, info

    _draw_frame = _render.draw_contextual
