"""Seconds per protocol step, split into generation, scoring and update.

    python -m llm_track.bench --shapes tiny
    python -m llm_track.bench --shapes llama-3.2-1b --device cuda --dtype bfloat16

Three modes are timed in the same run, on the same models and prompts:
- ``batched``: reference + candidates generated in one token loop (peft mixed-adapter batch: the
  reference row runs without the LoRA adapter), scored with one forward of the base model (oracle
  utility) and one of the reward model, FPO head penalties in closed form from the head's input
  features;
- ``two-loop-gen``: the same, but the reference and the candidates are generated in two token
  loops (base model, then policy), as before the one-loop generation; the ratio of the two
  generation times is printed;
- ``per-candidate``: one forward per answer for each model and per-candidate autograd for the
  head gradient (the straightforward implementation the paper's timing describes).
``--shapes llama-3.2-1b`` builds the real Llama-3.2-1B and DeBERTa-v3-base architectures with
random weights (no download) and synthetic word-level tokenizers of their vocabulary sizes, with
the ``paper`` preset's protocol (RM reads the answer, 128 tokens; whole-sequence SFT) in bfloat16
by default; it is meant for a GPU (too slow for more than a smoke test on a small CPU).
``--shapes tiny --dtype bfloat16`` runs the same code path on the CPU in seconds (a check that it
runs, not a speed figure). Seconds are wall-clock after a synchronisation of the device.
"""

from __future__ import annotations

import statistics
import sys
import time

from llm_track.config import LLMTrackError, preset_config
from llm_track.run import STEP_TIMES, OneLineParser, _quiet_libraries

# (name, batched scoring, one-loop generation when possible)
MODES = (("batched", True, True), ("two-loop-gen", True, False), ("per-candidate", False, True))


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
    mixing: str = "row-mask",
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
    build_s = time.perf_counter() - t0
    proto = Protocol(cfg, models, list(TRAIN_PROMPTS))
    proto.mixing = mixing
    out: dict = {
        "shapes": shapes,
        "device": device,
        "dtype": dtype,
        "candidates": candidates,
        "max_new_tokens": max_new_tokens,
        "agent": agent,
        "steps": steps,
        "build_s": build_s,
        "torch_threads": torch.get_num_threads(),
    }
    if device.startswith("cuda"):
        out["gpu"] = torch.cuda.get_device_name()
    out["generation_mode"] = proto.generation_mode  # one-loop unless the policy cannot mix
    # Warm-up step of every mode first (allocations, kernels), then the timed steps with the modes
    # interleaved, so that no mode alone pays for the process warming up (on a GPU the first few
    # steps of a process, and new prompt shapes, run markedly slower).
    rows: dict[str, list[dict]] = {mode: [] for mode, *_ in MODES}
    for t in range(steps + 1):
        for mode, batched, mixed in MODES:
            proto.mixed_generation = mixed
            row = proto.step(t, batched=batched)
            if t > 0:
                rows[mode].append(row)
    for mode in rows:
        out[mode] = {k: statistics.fmean(r[k] for r in rows[mode]) for k in STEP_TIMES}
    if device.startswith("cuda"):
        out["max_gpu_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
    out["scoring_speedup"] = out["per-candidate"]["score_s"] / max(out["batched"]["score_s"], 1e-9)
    out["generation_speedup"] = out["two-loop-gen"]["gen_s"] / max(out["batched"]["gen_s"], 1e-9)
    return out


def main(argv: list[str] | None = None) -> int:
    from llm_track.config import AGENTS, agent_with_penalty

    p = OneLineParser(prog="python -m llm_track.bench", description=__doc__.split("\n")[0])
    p.add_argument("--shapes", default="tiny", choices=("tiny", "llama-3.2-1b"))
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "float16"),
        help="model dtype (default: bfloat16 for llama-3.2-1b, float32 for tiny); the RM head, "
        "LoRA adapter and optimiser states are float32 either way",
    )
    p.add_argument("--steps", type=int, default=3, help="timed steps per mode (after a warm-up)")
    p.add_argument("--candidates", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument(
        "--agent",
        default=agent_with_penalty("relaxed"),  # the heaviest scoring (oracle verdicts too)
        choices=AGENTS,
    )
    p.add_argument(
        "--mixing",
        default="row-mask",
        choices=("row-mask", "peft"),
        help="how the one-loop generation runs the reference row without the adapter",
    )
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--json", help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    try:
        if args.steps < 1:
            raise LLMTrackError(f"--steps must be >= 1; got {args.steps}")
        _quiet_libraries()
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        if args.dtype is None:
            args.dtype = "float32" if args.shapes == "tiny" else "bfloat16"
        res = bench(**{k: v for k, v in vars(args).items() if k not in ("threads", "json")})
    except LLMTrackError as exc:
        print(f"python -m llm_track.bench: error: {exc}", file=sys.stderr)
        return 2
    print(
        f"{res['shapes']} on {res.get('gpu', res['device'])} ({res['dtype']}), "
        f"{res['candidates']} candidates x {res['max_new_tokens']} tokens, agent {res['agent']}, "
        f"mean of {res['steps']} steps (models built in {res['build_s']:.1f} s), "
        f"generation {res['generation_mode']}"
    )
    print("| mode | generation s | scoring s | update s | step s |")
    print("|---|---|---|---|---|")
    for mode, *_ in MODES:
        print(f"| {mode} | " + " | ".join(f"{res[mode][k]:.3f}" for k in STEP_TIMES) + " |")
    print(f"scoring speed-up of batched + closed form: {res['scoring_speedup']:.1f}x")
    print(
        f"generation speed-up of one loop (mixed-adapter batch) vs two loops: "
        f"{res['generation_speedup']:.2f}x"
        + ("" if res["generation_mode"] != "two-loop" else " (policy cannot mix: both two-loop)")
    )
    if args.json:
        from baselines.results import atomic_write_json

        atomic_write_json(args.json, res, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
