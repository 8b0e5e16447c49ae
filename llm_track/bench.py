"""Seconds per protocol step, split into generation, scoring and update.

    python -m llm_track.bench --shapes tiny
    python -m llm_track.bench --shapes llama-3.2-1b --device cuda --dtype bfloat16

Times ``loop.Protocol.step`` after one warm-up step: medians of wall-clock seconds (device
synchronised). ``llama-3.2-1b``: the real architectures with random weights and synthetic
tokenizers, the ``paper`` preset's protocol (``llm_track/README.md``, "Speed")."""

from __future__ import annotations

import statistics
import sys
import time

from llm_track.config import LLMTrackError, preset_config
from llm_track.run import STEP_TIMES, OneLineParser


def build(shapes: str, cfg):
    """Models (with LoRA, frozen RM backbone) of the requested shapes, on ``cfg.device``."""
    import torch

    from llm_track import models as M

    if shapes == "tiny":
        return M.load_models(cfg)
    dtype = M.torch_dtype(cfg.dtype)
    with torch.device(cfg.device):
        base, rm = M.build_random_models(
            M.llama_1b_config(), M.deberta_v3_base_config(), cfg.model_seed, dtype
        )
    policy_tok = M.build_synthetic_tokenizer(base.config.vocab_size)
    return M.with_lora(base, policy_tok, rm, M.build_synthetic_tokenizer(rm.config.vocab_size), cfg)


def bench(
    shapes: str,
    device: str,
    dtype: str,
    steps: int,
    candidates: int,
    max_new_tokens: int,
    agent: str,
) -> dict:
    import torch

    from llm_track.loop import Protocol
    from llm_track.prompts import TRAIN_PROMPTS

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise LLMTrackError("--device cuda asked for, but torch sees no CUDA device")
    cfg = preset_config(
        "tiny" if shapes == "tiny" else "paper",
        agent=agent,
        device=device,
        dtype=dtype,
        candidates=candidates,
        max_new_tokens=max_new_tokens,
        min_new_tokens=min(5, max_new_tokens),
        steps=steps,
    )
    t0 = time.perf_counter()
    models = build(shapes, cfg)
    out = dict(shapes=shapes, device=device, dtype=dtype, candidates=candidates, agent=agent)
    out.update(max_new_tokens=max_new_tokens, steps=steps, build_s=time.perf_counter() - t0)
    proto = Protocol(cfg, models, list(TRAIN_PROMPTS))
    if device.startswith("cuda"):
        out["device"] = torch.cuda.get_device_name()
    rows = [proto.step(t) for t in range(steps + 1)][1:]  # the first step warms up
    out.update(torch_threads=torch.get_num_threads(), generation_mode=proto.generation_mode)
    out.update({k: statistics.median(r[k] for r in rows) for k in STEP_TIMES})
    if device.startswith("cuda"):
        out["max_gpu_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def main(argv: list[str] | None = None) -> int:
    from llm_track.config import AGENTS, DTYPES, agent_with_penalty

    p = OneLineParser("bench", __doc__)
    p.add_argument("--shapes", default="tiny", choices=("tiny", "llama-3.2-1b"))
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--dtype", choices=DTYPES, help="default: bfloat16, float32 for tiny shapes")
    p.add_argument("--steps", type=int, default=3, help="timed steps (after a warm-up)")
    p.add_argument("--candidates", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=32)
    # the default is the heaviest scoring (oracle verdicts too)
    p.add_argument("--agent", default=agent_with_penalty("relaxed"), choices=AGENTS)
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--json", help="also write the figures to this JSON file")
    return p.main(argv, _main)


def _main(args) -> int:
    if args.steps < 1:
        raise LLMTrackError(f"--steps must be >= 1; got {args.steps}")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.dtype is None:
        args.dtype = "float32" if args.shapes == "tiny" else "bfloat16"
    res = bench(**{k: v for k, v in vars(args).items() if k not in ("threads", "json")})
    print(
        f"{res['shapes']} on {res['device']} ({res['dtype']}), {res['candidates']} candidates x "
        f"{res['max_new_tokens']} tokens, agent {res['agent']}, median of {res['steps']} steps "
        f"(models built in {res['build_s']:.1f} s), generation {res['generation_mode']}"
    )
    print("| generation s | scoring s | update s | step s |")
    print("|---|---|---|---|")
    print("| " + " | ".join(f"{res[k]:.4f}" for k in STEP_TIMES) + " |")
    if args.json:
        from baselines.results import atomic_write_json

        atomic_write_json(args.json, res, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
