"""An animation of alignment collapse: a naive policy beside relaxed FPO, as an animated GIF.

Examples::

    python -m baselines.animate --out results/figures/collapse.gif --force
    python -m baselines.animate --env RLHFNeuralBlindSpot-v0 --every 100 --out neural.gif

Each agent runs the white-box loop of ``baselines.run`` (the per-env YAML settings, one seed) on a
single env made with ``render_mode="rgb_array"``, one row of frames each (:func:`compose`); the
GIF loops and holds its last frame.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from baselines import cli
from baselines.plan import CLIError, load_defaults, yaml_settings

DEFAULT_ENV = "RLHFBlindSpot-v0"
DEFAULT_AGENTS = ("naive", "fpo-relaxed")
CAPTIONS = {
    "naive": "naive: ascends the current reward model",
    "fpo": "FPO: foresight of the RM's update",
    "fpo-relaxed": "relaxed FPO: foresight of the RM's update",
}


def agent_frames(env_id: str, agent: str, seed: int, rounds: int, every: int):
    """The frames of ``agent`` on ``env_id`` (YAML settings): every ``every`` rounds, the last."""
    import gymnasium as gym
    import torch

    import rlhf_envs  # noqa: F401
    from baselines.judge import agent_class

    torch.set_num_threads(1)
    cls = agent_class(agent)
    env = gym.make(env_id, render_mode="rgb_array")
    env.reset(seed=seed)
    runner = cls(cls.config_cls(**{**yaml_settings(env_id, cls), "rounds": rounds}), seed=[seed])
    frames = [env.render()]
    done = [0]

    def callback(_row) -> None:
        done[0] += 1
        if done[0] % every == 0 or done[0] == rounds:
            frames.append(env.render())

    runner.learn(env, rounds, callback)
    env.close()
    return frames


def _caption(frame: np.ndarray, text: str) -> np.ndarray:
    """``frame`` with a banner above it that names the agent."""
    from PIL import Image, ImageDraw, ImageFont

    banner = Image.new("RGB", (frame.shape[1], 34), (245, 245, 245))
    ImageDraw.Draw(banner).text(
        (12, 7), text, fill=(20, 20, 20), font=ImageFont.load_default(size=19)
    )
    return np.concatenate([np.asarray(banner), frame], 0)


def compose(rows: dict[str, list[np.ndarray]], width: int) -> list:
    """One PIL image per time step: the agents' frames stacked (the shorter runs hold their last
    frame), captioned, scaled to ``width`` pixels and reduced to a shared 64-colour palette."""
    from PIL import Image

    n = max(len(f) for f in rows.values())
    out = []
    for i in range(n):
        parts = [
            _caption(frames[min(i, len(frames) - 1)], CAPTIONS.get(agent, agent))
            for agent, frames in rows.items()
        ]
        img = Image.fromarray(np.concatenate(parts, 0))
        h = round(img.height * width / img.width / 2) * 2
        out.append(img.resize((width, h), Image.LANCZOS))
    palette = out[-1].quantize(colors=64, method=Image.Quantize.MEDIANCUT)
    return [im.quantize(palette=palette, dither=Image.Dither.NONE) for im in out]


def build_parser() -> cli.Parser:
    p = cli.command("baselines.animate", __doc__, cli.ROUNDS, cli.PUBLISH)
    p.add_argument("--env", default=DEFAULT_ENV, help=f"white-box env id (default {DEFAULT_ENV})")
    p.add_argument(
        "--agents",
        nargs="+",
        default=list(DEFAULT_AGENTS),
        help="agents, one row each (default: naive fpo-relaxed)",
    )
    p.add_argument("--seed", type=int, default=0, help="experiment seed (default 0)")
    p.add_argument(
        "--every", type=cli.positive_int, default=None, help="rounds per frame (default: rounds/40)"
    )
    p.add_argument("--fps", type=float, default=8.0, help="frames per second (default 8)")
    p.add_argument("--width", type=int, default=720, help="GIF width in pixels (default 720)")
    p.add_argument(
        "--out",
        default="collapse.gif",
        help="the GIF to write (default collapse.gif; into the committed results/ only with --force)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    try:
        args = p.parse_args(argv)
        import rlhf_envs
        from baselines.judge import agent_class

        if args.env not in rlhf_envs.WHITE_BOX_ENV_IDS:
            raise CLIError(
                f"--env must be a white-box env ({', '.join(rlhf_envs.WHITE_BOX_ENV_IDS)}), "
                f"got {args.env!r}"
            )
        for agent in args.agents:
            try:
                agent_class(agent)
            except ValueError as e:
                raise CLIError(f"--agents: {e}") from None
        if args.seed < 0:
            raise CLIError(f"--seed must be >= 0, got {args.seed}")
        if not args.fps > 0:
            raise CLIError(f"--fps must be > 0, got {args.fps}")
        if args.width < 64:
            raise CLIError(f"--width must be >= 64 pixels, got {args.width}")
        if Path(args.out).suffix.lower() != ".gif":
            raise CLIError(f"--out must end in .gif, got {args.out!r}")
        cli.refuse_committed(args.out, "--out", args.force)
    except CLIError as e:
        return p.fail(e)
    rounds = args.rounds or int(load_defaults(args.env).get("rounds", 300))
    every = args.every or max(1, rounds // 40)
    rows = {}
    for agent in args.agents:
        print(f"running {agent} on {args.env} (seed {args.seed}, {rounds} rounds)", flush=True)
        rows[agent] = agent_frames(args.env, agent, args.seed, rounds, every)
    images = compose(rows, args.width)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    ms = round(1000 / args.fps)
    durations = [ms] * (len(images) - 1) + [ms * 16]  # hold the last frame
    images[0].save(
        out, save_all=True, append_images=images[1:], duration=durations, loop=0, optimize=True
    )
    print(f"{len(images)} frames -> {out} ({out.stat().st_size // 1024} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
