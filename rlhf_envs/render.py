"""Pictures of the blind spot: ``render_mode="rgb_array"`` and ``"human"`` for every env.

In ``"human"`` mode the frame is drawn into a matplotlib window after every step; without a display
(Linux with neither ``DISPLAY`` nor ``WAYLAND_DISPLAY``) the Agg backend is used: nothing fails.
A vector env's frame (:func:`draw_vector`) shows ``U`` and ``r_phi`` with the recent responses
over the plane of ``y*`` and the responses' drift (:func:`vector_plane`), and a trace of both
scores round by round: collapse is the proxy climbing while ``U`` falls. The token and contextual
envs: their ``## Rendering``.

Each env hands :func:`render` its drawer; this module imports no env, and matplotlib only when a
frame is drawn. Drawing reads the env through uncounted white-box access and changes nothing.
Envs record what frames need (:data:`TRAIL` responses, :data:`HISTORY` scores) only when
``render_mode`` is set.
"""

from __future__ import annotations

import os
import sys
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

RENDER_MODES = ["human", "rgb_array"]
RENDER_FPS = 4
TRAIL = 200  # responses drawn on the maps
HISTORY = 4000  # responses whose scores the trace shows
FIG_WIDTH, PANEL_HEIGHT, DPI = 9.6, 3.6, 100  # 960 px wide, 360 px per row of panels
MAX_CLUSTERS = 3  # clusters drawn by the contextual env's frame
LEVELS = 16  # colour levels of the maps

EOS_COLOUR, ANSWER_COLOUR, FILLER_COLOUR, WORD_COLOUR = "#444444", "#2a9d4b", "#e07b00", "#9a9a9a"
PROXY_COLOUR, TRUE_COLOUR = "#d62728", "#1f77b4"


def check_render_mode(render_mode: Any, modes: list[str]) -> None:
    """Raise ``ValueError`` naming ``render_mode`` unless it is ``None`` or one of ``modes``."""
    if render_mode is not None and render_mode not in modes:
        raise ValueError(f"render_mode must be None or one of {modes}, got {render_mode!r}")


class Trail:
    """What the frames of one experiment need: recent responses and the scores of older ones.

    ``items``: ``(vector, proxy, true_utility, round, extra)`` of the last :data:`TRAIL`
    (``extra``: tokens or cluster); ``scores``: ``(round, proxy, true_utility, extra)`` of the
    last :data:`HISTORY`. ``experiment``: the core's generators (new at each seeded reset).
    """

    def __init__(self, experiment: Any):
        self.experiment = experiment
        self.items: deque = deque(maxlen=TRAIL)
        self.scores: deque = deque(maxlen=HISTORY)
        self.extent = np.zeros(4)  # the maps' (a_lo, a_hi, b_lo, b_hi), grown, never shrunk


def remember(env, vector: Any, proxy: Any, true_u: Any, extra: Any = None) -> None:
    """Record one scored response of a single env for its frames (called by ``step``)."""
    trail = env._render_trail = _trail(env)
    v = np.asarray(vector, dtype=np.float64).reshape(-1).copy()
    p, u = float(np.asarray(proxy).reshape(-1)[0]), float(np.asarray(true_u).reshape(-1)[0])
    # the response's round: the core counts completed rounds, and may just have finished this one
    rnd = env.core.round - (1 if env.core.in_round == 0 else 0)
    trail.items.append((v, p, u, rnd, extra))
    trail.scores.append((rnd, p, u, extra))


def _trail(env) -> Trail:
    """The env's trail; a new one for a new experiment."""
    trail = env.__dict__.get("_render_trail")
    if trail is None or trail.experiment is not getattr(env.core, "generators", None):
        trail = Trail(getattr(env.core, "generators", None))
    return trail


# -- figures and frames ----------------------------------------------------------------------------
def render(env, draw: Callable[[Any], None]) -> np.ndarray | None:
    """The frame of ``env`` in its ``render_mode``, drawn by ``draw(fig)`` into a cleared figure.

    ``"rgb_array"``: an ``(H, W, 3)`` uint8 array (off screen, no pyplot state touched).
    ``"human"``: drawn into the env's matplotlib window; returns ``None``.
    """
    fig = env.__dict__.get("_render_figure")
    if env.render_mode == "rgb_array":
        if fig is None:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure

            fig = env._render_figure = Figure(dpi=DPI)
            FigureCanvasAgg(fig)
        fig.clear()
        draw(fig)
        fig.canvas.draw()
        return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    import matplotlib  # "human"

    headless = not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    if sys.platform.startswith("linux") and headless and "inline" not in matplotlib.get_backend():
        matplotlib.use("Agg")  # no display: draw off screen rather than fail
    import matplotlib.pyplot as plt

    if fig is None or not plt.fignum_exists(fig.number):
        fig = env._render_figure = plt.figure(dpi=DPI)
    fig.clear()
    draw(fig)
    if matplotlib.get_backend().lower() in ("agg", "cairo", "pdf", "pgf", "ps", "svg"):
        fig.canvas.draw()  # non-interactive backend: nothing to show
    else:
        plt.pause(1.0 / RENDER_FPS)
    return None


def close(env) -> None:
    """Close the env's human-mode window, if it has one."""
    fig = env.__dict__.pop("_render_figure", None)
    if fig is not None and env.render_mode == "human":
        import matplotlib.pyplot as plt

        plt.close(fig)


# -- shared pieces ---------------------------------------------------------------------------------
def rm_scores(env, vectors: np.ndarray) -> np.ndarray:
    """The current RM's scores of float64 ``vectors`` (n, dims) of a single env (uncounted)."""
    with torch.no_grad():
        y = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float64)).unsqueeze(0)
        return env.core.reward_model.score(env.core.params, y)[0].numpy()


def _title(env, fig, trail: Trail, extra: str = "") -> None:
    last = "  |  no response yet"
    if trail.items:
        last = f"  |  last response: U = {trail.items[-1][2]:.2f}, r = {trail.items[-1][1]:.2f}"
    name = env.spec.id if env.spec is not None else type(env).__name__
    fig.suptitle(f"{name}  -  RM round {env.core.round}{last}{extra}", fontsize=10)


def _trace(ax, scores: list, scale: float, title: str = "scores of submitted responses") -> None:
    """Proxy and true utility of responses, averaged per RM round (the y axis spans at least
    ``[0, scale]``, so that frames and agents compare)."""
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("RM round", fontsize=8)
    ax.tick_params(labelsize=7)
    if not scores:
        ax.text(0.5, 0.5, "no response yet", ha="center", va="center", transform=ax.transAxes)
        return
    rounds = np.array([s[0] for s in scores])
    first = rounds.min()
    counts = np.bincount(rounds - first)
    seen = counts > 0
    lo, hi = 0.0, scale
    x = np.arange(first, rounds.max() + 1)[seen]
    for col, colour, label in ((2, TRUE_COLOUR, "true utility U"), (1, PROXY_COLOUR, "proxy r")):
        vals = np.bincount(rounds - first, weights=[s[col] for s in scores])[seen] / counts[seen]
        ax.plot(x, vals, color=colour, lw=1.2, label=label)
        lo, hi = min(lo, vals.min()), max(hi, vals.max())
    ax.set_ylim(lo - 0.05 * (hi - lo), hi + 0.25 * (hi - lo))  # room for the legend on top
    ax.legend(fontsize=7, loc="upper left", ncol=2)


def _layout(fig) -> None:
    """Fixed margins in inches (the same layout in every frame: no jitter in a video)."""
    h = fig.get_size_inches()[1]
    fig.subplots_adjust(left=0.075, right=0.985, bottom=0.55 / h, top=1 - 0.75 / h,
                        wspace=0.32, hspace=0.45)  # fmt: skip


def _maps(axes, fig, p: dict[str, Any], titles: tuple[str, str], scale: float, path: bool) -> None:
    """``U`` (colours from 0 to ``scale``) and ``r`` of the plane ``p`` (:func:`_plane`) on the
    first two ``axes``, each with its points (:func:`_points`)."""
    import matplotlib

    extent = (p["a"][0], p["a"][-1], p["b"][0], p["b"][-1])
    for ax, key, title in zip(axes[:2], "Ur", titles, strict=True):
        cmap = matplotlib.colormaps["viridis" if key == "U" else "magma"].resampled(LEVELS)
        # bands with smooth edges: readable levels, small videos
        kw = dict(interpolation="bilinear", interpolation_stage="data", aspect="auto")
        if key == "U":
            kw.update(vmin=0.0, vmax=scale)
        im = ax.imshow(p[key], origin="lower", extent=extent, cmap=cmap, **kw)
        fig.colorbar(im, ax=ax, fraction=0.06, pad=0.02).ax.tick_params(labelsize=7)
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=7)
        _points(ax, *p["points"], p["target"], path)
        ax.set_xlim(*extent[:2])
        ax.set_ylim(*extent[2:])


def _points(ax, a: np.ndarray, b: np.ndarray, star: tuple[float, float], path=True) -> None:
    """The target (star), the recent responses (fading, joined by their path if ``path``) and
    the latest one (ringed)."""
    ax.plot(*star, marker="*", ms=13, color="white", mec="black", mew=0.8, ls="none")
    if len(a):
        if path:
            ax.plot(a, b, color="white", lw=0.7, alpha=0.6)
        colours = np.ones((len(a), 4))  # white, fading in
        colours[:, 3] = np.linspace(0.25, 1.0, len(a))
        ax.scatter(a, b, s=10, c=colours, edgecolors="none")
        ax.plot(a[-1], b[-1], "o", ms=8, mfc="none", mec="red", mew=1.8)


def _unit(v: np.ndarray, e1: np.ndarray | None = None) -> np.ndarray | None:
    """``v`` (made orthogonal to the unit ``e1`` if given) scaled to norm 1; None if ~0."""
    if e1 is not None:
        v = v - (v @ e1) * e1
    n = float(np.linalg.norm(v))
    return v / n if n > 1e-9 else None


def _plane(env, a, b, e1, e2, t, points, prompt=None) -> dict[str, Any]:
    """``U`` (a peak at ``(t, 0)``) and the RM's ``r`` on the grid ``a x b`` of the plane
    ``a e1 + b e2`` (responses after ``prompt``, if given), with the responses' ``points``."""
    c = env.core.config
    A, B = np.meshgrid(a, b)
    u = c.utility_scale * np.exp(-c.utility_width * ((A - t) ** 2 + B**2))
    if e2 is None:  # a one-dimensional response: nothing off the axis
        r = np.repeat(rm_scores(env, np.outer(a, e1))[None], len(b), 0)
    else:
        grid = A.reshape(-1, 1) * e1 + B.reshape(-1, 1) * e2
        if prompt is not None:
            grid = np.concatenate([np.broadcast_to(prompt, (len(grid), len(prompt))), grid], 1)
        r = rm_scores(env, grid).reshape(A.shape)
    return {"a": a, "b": b, "U": u, "r": r, "points": points, "target": (t, 0.0)}


# -- vector envs -------------------------------------------------------------------------------------
def vector_plane(env) -> dict[str, Any]:
    """The maps of a vector env's frame (:func:`_plane`): ``a`` along ``y*`` (``U`` depends on
    nothing else: exact), ``b`` off its axis along the drift (where a naive policy's RM
    overrates). Uncounted white-box reads; the env is unchanged."""
    core, trail = env.core, _trail(env)
    c = core.config
    y_star = core.y_star.numpy()
    e1 = _unit(y_star)
    e1 = np.eye(c.dims)[0] if e1 is None else e1  # target at the origin: the first signal dim
    t = float(y_star @ e1)
    ys = np.stack([it[0] for it in trail.items]) if trail.items else np.zeros((0, c.dims))
    a_pts = ys @ e1
    off = ys - np.outer(a_pts, e1)
    b_pts = np.linalg.norm(off, axis=1)
    # the drift: where the latest responses left the y* axis; before it, the RM's gradient off it
    e2 = _unit(off[-8:].mean(0)) if len(off) else None
    if e2 is None:
        last = ys[-1] if len(ys) else np.zeros(c.dims)
        y = torch.from_numpy(last.reshape(1, 1, -1).copy())
        e2 = _unit(core.reward_model.grad_y(core.params, y)[0, 0].numpy(), e1)
    if e2 is None:
        e2 = _unit(np.eye(c.dims)[min(c.signal_dims, c.dims - 1)], e1)
    span = max(abs(t), 1.0)
    lo, hi = min(-0.25 * span, a_pts.min(initial=0.0)), max(1.5 * span, a_pts.max(initial=0.0))
    ext = np.array([lo, hi, 0.0, max(1.25 * span, b_pts.max(initial=0.0))])
    old = trail.extent if trail.extent.any() else ext  # grown, never shrunk: frames do not jitter
    small, big = np.minimum(old, ext), np.maximum(old, ext)
    ext = trail.extent = np.array([small[0], big[1], small[2], big[3]])
    pad_a, pad_b = 0.05 * (ext[1] - ext[0]), 0.05 * ext[3]
    a = np.linspace(ext[0] - pad_a, ext[1] + pad_a, 90)
    b = np.linspace(-0.5 * pad_b, ext[3] + pad_b, 70)  # a little below 0: the target shows
    return _plane(env, a, b, e1, e2, t, (a_pts, b_pts))


def draw_vector(env, fig) -> None:
    """The frame of a vector env: ``U`` and ``r`` on :func:`vector_plane`, the score trace."""
    trail = _trail(env)
    fig.set_size_inches(FIG_WIDTH, PANEL_HEIGHT)
    axes = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1, 1, 0.9]})
    c = env.core.config
    titles = ("true utility U (hidden)", "reward model r (what the policy sees)")
    _maps(axes, fig, vector_plane(env), titles, c.utility_scale, path=True)
    for ax in axes[:2]:
        ax.set_xlabel("along the target: y . y*/|y*|", fontsize=8)
    axes[0].set_ylabel("distance from the y* axis\n(mostly the noise dims)", fontsize=8)
    _trace(axes[2], list(trail.scores), c.utility_scale)
    _title(env, fig, trail)
    _layout(fig)


# -- token env ---------------------------------------------------------------------------------------
def draw_tokens(env, fig, eos: int, answer: int, filler: int) -> None:
    """The frame of the token env whose ``eos``, ``answer`` and ``filler`` are these token ids:
    the last answers, the scores of ``answer + j x filler + eos`` for every ``j``, the trace."""
    from matplotlib.patches import Rectangle

    trail, c, core = _trail(env), env.config, env.core
    fig.set_size_inches(FIG_WIDTH, PANEL_HEIGHT)
    axes = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1.25, 1, 0.9]})
    # 1. the last answers, newest on top (and the one being written, if any)
    ax = axes[0]
    rows = [(list(env.tokens), "writing...")] if env.tokens and not env._done else []
    for _, proxy, u, _, tokens in list(reversed(trail.items))[: 7 - len(rows)]:
        rows.append((list(tokens), f"r {proxy:5.2f}  U {u:5.2f}"))
    names = {eos: "EOS", answer: "ANS", filler: "FIL"}
    colours = {eos: EOS_COLOUR, answer: ANSWER_COLOUR, filler: FILLER_COLOUR}
    for i, (tokens, label) in enumerate(rows):
        y = 6 - i
        for j, tok in enumerate(tokens):
            colour = colours.get(tok, WORD_COLOUR)
            ax.add_patch(Rectangle((j, y), 0.9, 0.8, facecolor=colour, edgecolor="none"))
            ax.text(j + 0.45, y + 0.4, names.get(tok, f"w{tok}"), ha="center", va="center",
                    fontsize=6, color="white")  # fmt: skip
        ax.text(c.max_len + 0.2, y + 0.4, label, va="center", fontsize=7, family="monospace")
    ax.set_xlim(-0.2, c.max_len + 5.2)
    ax.set_ylim(-0.3, 7.1)
    ax.axis("off")
    ax.set_title("last answers (newest on top): proxy r, true U", fontsize=9)
    # 2. the blind spot: the RM and the truth on the answer padded with filler
    ax = axes[1]
    j = np.arange(c.max_len - 1)
    seqs = [[answer] + [filler] * int(k) + [eos] for k in j]
    f = env.features(seqs).numpy()
    with torch.no_grad():
        ft = torch.from_numpy(f).unsqueeze(0)
        u = core.utility(ft)[0].numpy()
        lab = core.labeler_utility(ft)[0].numpy()
    ax.plot(j, rm_scores(env, f), "o-", color=PROXY_COLOUR, ms=3, label="reward model r")
    ax.plot(j, u, "o-", color=TRUE_COLOUR, ms=3, label="true utility U")
    if c.labeler_bias and c.feedback == "rating":
        ax.plot(j, lab, "--", color="#777777", lw=1, label="labeler's rating")
    ax.set_xlabel("FILLER tokens after the answer", fontsize=8)
    ax.set_title("ANSWER + j x FILLER: scores now", fontsize=9)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7, loc="best")
    _trace(axes[2], list(trail.scores), c.utility_scale)
    _title(env, fig, trail)
    _layout(fig)


# -- contextual env --------------------------------------------------------------------------------
def cluster_plane(env, k: int) -> dict[str, Any]:
    """The maps of cluster ``k`` (:func:`_plane`; prompt: its centre): ``a`` along ``y*_k``, ``b``
    along the labeler's spurious dims. Uncounted white-box reads; the env is unchanged."""
    core, c, trail = env.core, env.config, _trail(env)
    y_star = core.targets[k].numpy()
    e1 = _unit(y_star)
    e1 = np.eye(c.dims)[0] if e1 is None else e1
    bias = np.zeros(c.dims)
    bias[list(c.labeler_bias_dims)] = 1.0
    e2 = _unit(bias, e1)
    if e2 is None:  # the spurious dims are along the target: any other direction
        e2 = _unit(np.eye(c.dims)[(int(np.argmax(np.abs(e1))) + 1) % c.dims], e1)
    t = float(y_star @ e1)
    mine = [it for it in trail.items if it[4] == k]
    ys = np.stack([it[0][c.prompt_dims :] for it in mine]) if mine else np.zeros((0, c.dims))
    a_pts = ys @ e1
    b_pts = ys @ e2 if e2 is not None else np.zeros(len(ys))
    span = max(abs(t), 1.5)
    a = np.linspace(min(-span, a_pts.min(initial=0)), max(2 * span, a_pts.max(initial=0)), 80)
    reach = max(2 * span, np.abs(b_pts).max(initial=0.0) * 1.1)
    b = np.linspace(-reach, reach, 70)
    e2 = e2 if e2 is not None else np.zeros(c.dims)  # a one-dimensional response
    return _plane(env, a, b, e1, e2, t, (a_pts, b_pts), core.centres[k].numpy())


def draw_contextual(env, fig) -> None:
    """The frame of a contextual env: per cluster, :func:`cluster_plane` and its score trace."""
    trail, c = _trail(env), env.config
    shown = list(range(min(c.n_clusters, MAX_CLUSTERS)))
    fig.set_size_inches(FIG_WIDTH, 0.6 + (PANEL_HEIGHT - 0.9) * len(shown))
    axes = np.atleast_2d(fig.subplots(len(shown), 3, gridspec_kw={"width_ratios": [1, 1, 0.9]}))
    for row, k in zip(axes, shown, strict=True):
        p = cluster_plane(env, k)
        tag = " (labeler biased)" if k == c.blind_cluster and c.labeler_bias else ""
        titles = (f"cluster {k}{tag}: true utility U", f"cluster {k}: reward model r")
        _maps(row, fig, p, titles, c.utility_scale, path=False)
        row[0].set_ylabel("along the labeler's\nspurious dims", fontsize=8)
        scores = [s for s in trail.scores if s[3] == k]
        _trace(row[2], scores, c.utility_scale, f"cluster {k}: scores of responses")
    for ax in axes[-1, :2]:
        ax.set_xlabel("along the cluster's target y*_k", fontsize=8)
    more = f"  |  clusters 0-{shown[-1]} of {c.n_clusters}" if len(shown) < c.n_clusters else ""
    _title(env, fig, trail, more)
    _layout(fig)
