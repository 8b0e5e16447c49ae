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
runs, not a speed figure). Seconds are wall-clock after a synchronisation of the device; each
figure is the median over the timed steps.

The decoding options of ``LLMConfig`` pass through (``--top-p-topk``, ``--static-cache``,
``--compile-decode``). ``--compare-decoding`` times, instead of the three modes, the ``batched``
mode under each decoding variant, interleaved step by step on the same models: top-p by the full
sort (``top_p_topk`` 0) or the top-k (same tokens), each with the growing and the static KV cache,
and with ``--compile-decode MODE`` also the top-k with the static cache compiled (its warm-up step
includes the compilation and is not timed). ``--sampler-vocab V`` times only the top-p filter and
draw of one token step (``candidates + 1`` rows of V logits, no model), full sort vs top-k, on
synthetic rows at the two ends: ``peaked`` (8 likely tokens: every row takes the top-k path) and
``flat`` (a nucleus of thousands: every row falls back to the full sort).
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
import time

from llm_track.config import LLMTrackError, preset_config
from llm_track.run import STEP_TIMES, OneLineParser, _quiet_libraries

# (name, batched scoring, one-loop generation when possible)
MODES = (("batched", True, True), ("two-loop-gen", True, False), ("per-candidate", False, True))


def decoding_variants(top_p_topk: int, compile_decode: str) -> list[tuple[str, dict]]:
    """(name, decoding settings) timed by ``--compare-decoding``."""
    k = top_p_topk or 64
    out = [
        ("full-sort", dict(top_p_topk=0, static_cache=False, compile_decode="off")),
        (f"top-{k}", dict(top_p_topk=k, static_cache=False, compile_decode="off")),
        ("full-sort+static", dict(top_p_topk=0, static_cache=True, compile_decode="off")),
        (f"top-{k}+static", dict(top_p_topk=k, static_cache=True, compile_decode="off")),
    ]
    if compile_decode != "off":
        settings = dict(top_p_topk=k, static_cache=True, compile_decode=compile_decode)
        out.append((f"top-{k}+static+compile-{compile_decode}", settings))
    return out


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
    top_p_topk: int | None = None,
    static_cache: bool | None = None,
    compile_decode: str | None = None,
    compare_decoding: bool = False,
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
        top_p_topk=top_p_topk,
        static_cache=static_cache,
        compile_decode=compile_decode,
    )
    variants = decoding_variants(cfg.top_p_topk, cfg.compile_decode) if compare_decoding else []
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
        "top_p": cfg.top_p,
        "temperature": cfg.temperature,
        "decoding": {k: getattr(cfg, k) for k in ("top_p_topk", "static_cache", "compile_decode")},
        "build_s": build_s,
        "torch_threads": torch.get_num_threads(),
    }
    if device.startswith("cuda"):
        out["gpu"] = torch.cuda.get_device_name()
    out["generation_mode"] = proto.generation_mode  # one-loop unless the policy cannot mix
    # Warm-up step of every mode first (allocations, kernels), then the timed steps with the modes
    # interleaved, so that no mode alone pays for the process warming up (on a GPU the first few
    # steps of a process, and new prompt shapes, run markedly slower).
    # --compare-decoding: the batched mode under each decoding variant, in the same way.
    runs = [(name, True, True, dataclasses.replace(cfg, **d)) for name, d in variants]
    runs = runs or [(mode, batched, mixed, cfg) for mode, batched, mixed in MODES]
    rows: dict[str, list[dict]] = {name: [] for name, *_ in runs}
    for t in range(steps + 1):
        for name, batched, mixed, run_cfg in runs:
            proto.cfg, proto.mixed_generation = run_cfg, mixed
            row = proto.step(t, batched=batched)
            if t > 0:
                rows[name].append(row)
    proto.cfg = cfg
    for name in rows:
        out[name] = {k: statistics.median(r[k] for r in rows[name]) for k in STEP_TIMES}
    out["timed"] = list(rows)
    if device.startswith("cuda"):
        out["max_gpu_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
    if variants:
        return out
    out["scoring_speedup"] = out["per-candidate"]["score_s"] / max(out["batched"]["score_s"], 1e-9)
    out["generation_speedup"] = out["two-loop-gen"]["gen_s"] / max(out["batched"]["gen_s"], 1e-9)
    return out


def sampler_bench(
    vocab: int, rows: int, top_p: float, temperature: float, k: int, repeats: int, device="cpu"
) -> dict:
    """Median seconds of one token step's top-p filter and draw, full sort (``top_p_topk`` 0) vs
    top-k, on ``peaked`` and ``flat`` synthetic logits (see the module docstring)."""
    import torch

    from llm_track.loop import _clock, _top_p_probs_topk

    g = torch.Generator().manual_seed(0)
    flat = torch.randn(rows, vocab, generator=g) * 0.5
    peaked = torch.randn(rows, vocab, generator=g) * 2
    likely = torch.randint(vocab, (rows, 8), generator=g)
    peaked.scatter_add_(1, likely, torch.full((rows, 8), 15.0))
    draw = torch.Generator(device=device).manual_seed(0)
    out = {}
    for kind, logits in (("peaked", peaked.to(device)), ("flat", flat.to(device))):
        for name, kk in (("full-sort", 0), (f"top-{k}", k)):
            times = []
            for _ in range(repeats + 1):  # the first is a warm-up
                t0 = _clock(device)
                probs = _top_p_probs_topk(logits / temperature, top_p, kk)
                torch.multinomial(probs, 1, generator=draw)
                times.append(_clock(device) - t0)
            out[f"{kind}/{name}"] = statistics.median(times[1:])
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
    p.add_argument(
        "--top-p-topk",
        type=int,
        metavar="K",
        help="top-p from the K most likely tokens where exact (default 64; 0: the full sort)",
    )
    p.add_argument(
        "--static-cache",
        action="store_true",
        default=None,
        help="decode with a preallocated KV cache (transformers StaticCache)",
    )
    p.add_argument(
        "--compile-decode",
        metavar="MODE",
        help="torch.compile the decode step: off, default, reduce-overhead or max-autotune "
        "(needs --static-cache, except with --compare-decoding)",
    )
    p.add_argument(
        "--compare-decoding",
        action="store_true",
        help="time the batched mode under each decoding variant (full sort / top-k, growing / "
        "static cache, compiled with --compile-decode) instead of the three modes",
    )
    p.add_argument(
        "--sampler-vocab",
        type=int,
        metavar="V",
        help="time only the top-p filter and draw of one token step on V synthetic logits per "
        "row (full sort vs top-k, peaked and flat rows), no model",
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
        if args.sampler_vocab is not None:
            return _print_sampler_bench(args)
        if args.compare_decoding and args.compile_decode not in (None, "off"):
            args.static_cache = True  # the compiled variant runs on the static cache
        skip = ("threads", "json", "sampler_vocab")
        res = bench(**{k: v for k, v in vars(args).items() if k not in skip})
    except LLMTrackError as exc:
        print(f"python -m llm_track.bench: error: {exc}", file=sys.stderr)
        return 2
    dec = res["decoding"]
    print(
        f"{res['shapes']} on {res.get('gpu', res['device'])} ({res['dtype']}), "
        f"{res['candidates']} candidates x {res['max_new_tokens']} tokens, agent {res['agent']}, "
        f"median of {res['steps']} steps (models built in {res['build_s']:.1f} s), "
        f"generation {res['generation_mode']}, top-p {res['top_p']}"
        + (
            ""
            if args.compare_decoding
            else f", top_p_topk {dec['top_p_topk']}, static cache {dec['static_cache']}, "
            f"compile {dec['compile_decode']}"
        )
    )
    print(f"| {'decoding' if args.compare_decoding else 'mode'} | generation s | scoring s | "
          "update s | step s |")  # fmt: skip
    print("|---|---|---|---|---|")
    for name in res["timed"]:
        print(f"| {name} | " + " | ".join(f"{res[name][k]:.4f}" for k in STEP_TIMES) + " |")
    if args.compare_decoding:
        if args.json:
            from baselines.results import atomic_write_json

            atomic_write_json(args.json, res, default=str)
        return 0
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


def _print_sampler_bench(args) -> int:
    import torch

    from llm_track.config import preset_config

    if args.sampler_vocab < 3:
        raise LLMTrackError(f"--sampler-vocab must be >= 3; got {args.sampler_vocab}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise LLMTrackError("--device cuda asked for, but torch sees no CUDA device")
    cfg = preset_config("tiny", candidates=args.candidates, top_p_topk=args.top_p_topk)
    k, rows, n = cfg.top_p_topk or 64, cfg.candidates + 1, 20 * args.steps
    res = sampler_bench(args.sampler_vocab, rows, cfg.top_p, cfg.temperature, k, n, args.device)
    where = (
        torch.cuda.get_device_name()
        if args.device == "cuda"
        else f"{torch.get_num_threads()} CPU threads"
    )
    print(
        f"top-p {cfg.top_p} filter + draw of one token step, {rows} rows x {args.sampler_vocab} "
        f"float32 logits, temperature {cfg.temperature}, on {where}, median of {n}"
    )
    print("| logits | full sort s | top-k s |")
    print("|---|---|---|")
    for kind in ("peaked", "flat"):
        print(f"| {kind} | {res[f'{kind}/full-sort']:.6f} | {res[f'{kind}/top-{k}']:.6f} |")
    if args.json:
        from baselines.results import atomic_write_json

        atomic_write_json(args.json, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
