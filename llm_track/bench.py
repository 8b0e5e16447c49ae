"""Seconds per protocol step of a preset on this machine, split into generation, scoring, update.

python -m llm_track.bench --preset smol --threads 1       # 8 candidates, <= 32 new tokens
"""

from __future__ import annotations

import os
import statistics
import sys
import time

from llm_track.config import AGENTS, PRESETS, LLMTrackError, preset_config
from llm_track.run import THREADS_HELP, OneLineParser, _set_threads


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser("bench", __doc__)
    p.add_argument("--preset", default="smol", choices=PRESETS)
    p.add_argument("--agent", default="fpo", choices=AGENTS)
    p.add_argument("--steps", type=int, default=5, help="timed steps after one untimed")
    p.add_argument("--dtype", help="float32, bfloat16 or float16 (default: the preset's)")
    p.add_argument("--threads", type=int, help=THREADS_HELP)
    return p.main(argv, _main)


def _main(args) -> int:
    import torch

    from llm_track.loop import Protocol
    from llm_track.models import load_models
    from llm_track.prompts import load_prompts

    if args.steps < 1:
        raise LLMTrackError(f"--steps must be >= 1; got {args.steps}")
    cfg = preset_config(args.preset, agent=args.agent, dtype=args.dtype)
    _set_threads(args.threads, cfg)
    proto = Protocol(cfg, load_models(cfg), load_prompts(cfg.prompts, "train")[0])
    proto.step(0)  # warm-up
    cpu = time.process_time()
    rows = [proto.step(t) for t in range(1, args.steps + 1)]
    med = {
        k: statistics.median(r[k] for r in rows) for k in ("step_s", "gen_s", "score_s", "update_s")
    }
    print(
        f"{cfg.preset} {cfg.agent} ({cfg.dtype}, {cfg.candidates} candidates, <= {cfg.max_new_tokens}"
        f" new tokens, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}): "
        f"{med['step_s']:.2f} s/step, median of {args.steps} (generation {med['gen_s']:.2f}, "
        f"scoring {med['score_s']:.2f}, update {med['update_s']:.2f}); "
        f"{(time.process_time() - cpu) / args.steps:.2f} CPU s/step"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
