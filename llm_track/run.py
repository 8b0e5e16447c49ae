"""Run the paper's LLM protocol for one agent and seed.

    python -m llm_track.run --agent fpo --preset tiny                # offline, CPU, ~1 minute
    python -m llm_track.run --agent naive --preset paper --steps 500 # Llama-3.2-1B + DeBERTa RM

What a run writes, ``--resume`` and ``--force``: ``llm_track/README.md``, "Files of a run" and
"Rerunning and resuming"."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import json
import os
import resource
import shutil
import sys
import time

from baselines import cli, results
from baselines.results import atomic_write_json, read_csv, read_json, versions_record, write_csv
from llm_track.config import AGENTS, PRESETS, LLMConfig, LLMTrackError, preset_config

# Settings that must match for --resume (steps may grow; the device may change).
_RESUME_FREE = {"steps", "device"}


class OneLineParser(cli.Parser):
    """The parser of ``python -m llm_track.<command>``: a bad argument or an LLMTrackError is one
    line on stderr (no usage block) and exit status 2."""

    def __init__(self, command: str, doc: str):
        super().__init__(prog=f"python -m llm_track.{command}", description=doc.split("\n")[0])

    def main(self, argv: list[str] | None, body) -> int:
        """Parse ``argv``, quiet the libraries and return ``body(args)``'s exit status."""
        try:
            args = self.parse_args(argv)
            _quiet_libraries()
            return body(args)
        except (cli.CLIError, LLMTrackError) as exc:
            return self.fail(exc)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _summary(cfg: LLMConfig, rows: list[dict], wall_s: float, folder: str) -> dict:
    k = max(1, min(10, len(rows) // 5 or 1))

    def mean(key, part):
        vals = [r[key] for r in part]
        return sum(vals) / len(vals) if vals else None

    first, last = rows[:k], rows[-k:]
    return {
        "agent": cfg.agent,
        "label": cfg.label,
        "seed": cfg.seed,
        "steps_done": len(rows),
        "window": k,
        "utility_winner_first": mean("utility_winner", first),
        "utility_winner_last": mean("utility_winner", last),
        "proxy_winner_first": mean("proxy_winner", first),
        "proxy_winner_last": mean("proxy_winner", last),
        "utility_ref_mean": mean("utility_ref", rows),
        "overconfidence_last": mean("overconfidence", last),
        "oracle_queries": rows[-1]["oracle_queries"] if rows else 0,
        "mean_step_s": mean("step_s", rows),
        "wall_s_this_session": wall_s,
        "max_rss_mb": _rss_mb(),
        # run_state's seal; the checkpoint's files (the manifest holds top-level names only)
        "status": "ok",
        "config_hash": results.config_hash(_settings(cfg)),
        "checkpoint": {
            os.path.relpath(path, folder): results.file_record(path)["sha256"]
            for d, _, files in os.walk(os.path.join(folder, "checkpoint"))
            for path in (os.path.join(d, f) for f in files)
        },
    }


#: What a run writes into its folder (``--force`` removes these before starting over).
RUN_FILES = (results.MANIFEST, "config.json", "metrics.csv", "summary.json", "eval.json")
#: (``written_whole`` writes through ``.tmp`` and ``.old`` folders)
CHECKPOINT_DIRS = tuple(d + end for d in ("checkpoint", "adapter") for end in ("", ".tmp", ".old"))


def _settings(cfg: LLMConfig) -> dict:
    """The settings in their JSON form (tuples as lists), as config.json and meta.json hold them."""
    return json.loads(json.dumps(cfg.to_dict(), default=str))


def _check_settings(cfg: LLMConfig, recorded: dict, where: str, remedy: str) -> None:
    """Refuse --resume if a setting that decides the numbers (not ``_RESUME_FREE``) differs."""
    diff = [k for k, v in _settings(cfg).items() if k not in _RESUME_FREE and recorded.get(k) != v]
    if diff:
        raise LLMTrackError(
            f"--resume: settings differ from {where} ({', '.join(diff)}); use the same settings "
            f"or {remedy}"
        )


def _metrics_records(folder: str) -> list[list[str]]:
    """``metrics.csv`` as raw CSV records (header first); ``[]`` when there is none."""
    path = os.path.join(folder, "metrics.csv")
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.reader(f))


def _rows_digest(records: list[list[str]]) -> str:
    return hashlib.sha256(json.dumps(records).encode()).hexdigest()


def _checkpoint_meta(cfg: LLMConfig, folder: str, step: int) -> dict:
    """What ties a checkpoint to its run: settings and a digest of the metrics rows it ends."""
    records = _metrics_records(folder)
    return {
        "step": step,
        "config": _settings(cfg),
        "metrics_rows": max(0, len(records) - 1),
        "metrics_sha256": _rows_digest(records),
    }


def _check_checkpoint_meta(cfg: LLMConfig, folder: str, ckpt: str) -> int:
    """Check ``checkpoint/meta.json`` against the settings and ``metrics.csv``; its step."""
    path = os.path.join(ckpt, "meta.json")
    if not os.path.exists(path):
        raise LLMTrackError(f"--resume: {ckpt} has no meta.json; use --force to start over")
    meta = read_json(path)
    _check_settings(cfg, meta["config"], f"the checkpoint in {ckpt}", "--force to start over")
    step, n = meta["step"], meta["metrics_rows"]
    records = _metrics_records(folder)
    if len(records) - 1 < n or _rows_digest(records[: n + 1]) != meta["metrics_sha256"]:
        raise LLMTrackError(
            f"--resume: the checkpoint in {ckpt} (step {step}) does not match "
            f"{os.path.join(folder, 'metrics.csv')} ({max(0, len(records) - 1)} rows, from "
            "another start of the run?); use --force to start over"
        )
    return step


def _existing_run(folder: str) -> str | None:
    """A description of the run already in ``folder``, or None when there is none."""
    present = [n for n in (*RUN_FILES, *CHECKPOINT_DIRS) if os.path.exists(os.path.join(folder, n))]
    if not present:
        return None
    n = max(0, len(_metrics_records(folder)) - 1)
    return f"{n} steps in metrics.csv" if "metrics.csv" in present else ", ".join(present)


def _clear_run(folder: str) -> None:
    """Remove what a run wrote into ``folder`` (``--force``): nothing stale for a later resume."""
    for name in CHECKPOINT_DIRS:
        shutil.rmtree(os.path.join(folder, name), ignore_errors=True)
    for name in RUN_FILES:
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(folder, name))


def run_protocol(
    cfg: LLMConfig,
    out: str,
    *,
    resume: bool = False,
    force: bool = False,
    checkpoint_every: int = 50,
    progress: bool = True,
) -> str:
    """Run (or resume, or with ``force`` start over) one agent/seed; returns the run folder. The
    folder is locked (``baselines.results.RunLock``) and sealed when done (manifest.json)."""
    import torch

    if checkpoint_every < 1:
        raise LLMTrackError(f"--checkpoint-every must be >= 1; got {checkpoint_every}")
    if resume and force:
        raise LLMTrackError("--resume and --force exclude each other")
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise LLMTrackError("--device cuda asked for, but torch sees no CUDA device")
    folder = os.path.join(out, cfg.label, f"seed_{cfg.seed}")
    try:
        cli.check_writable(folder, "--out")
    except cli.CLIError as exc:
        raise LLMTrackError(str(exc)) from None
    lock = results.RunLock(folder)
    if not lock.acquire():
        raise LLMTrackError(
            f"--out: {folder} is being written by another llm_track.run (its .lock is held); "
            "wait for it to end or pass another --out"
        )
    try:
        return _run_locked(cfg, folder, resume, force, checkpoint_every, progress)
    finally:
        lock.release()


def _run_locked(cfg, folder, resume, force, checkpoint_every, progress) -> str:
    import torch
    from tqdm import tqdm

    from llm_track.export import export_adapter
    from llm_track.loop import Protocol
    from llm_track.models import load_models
    from llm_track.prompts import load_prompts, prompts_digest

    ckpt = os.path.join(folder, "checkpoint")
    resuming = resume and os.path.exists(os.path.join(ckpt, "state.pt"))
    existing = _existing_run(folder)
    if existing and not (resume or force):
        raise LLMTrackError(
            f"{folder} already holds a run ({existing}); use --resume to continue it "
            "or --force to start it over"
        )
    config_path = os.path.join(folder, "config.json")
    recorded = read_json(config_path) if resume and os.path.exists(config_path) else None
    if resuming and recorded is None:
        raise LLMTrackError(
            f"--resume: {folder} has a checkpoint but no config.json; use --force to start over"
        )
    if recorded is not None:
        where = f"the checkpointed run in {folder}"
        _check_settings(cfg, recorded["config"], where, "another --out")
    if resuming:
        step = _check_checkpoint_meta(cfg, folder, ckpt)
        if step > cfg.steps:
            raise LLMTrackError(
                f"--resume: --steps {cfg.steps} is below the checkpoint's step {step}"
            )

    prompts, source = load_prompts(cfg.prompts, "train", cfg.prompt_column)
    digest = prompts_digest(prompts)
    if resuming and recorded["prompts_sha256"] != digest:
        raise LLMTrackError(
            f"--resume: the prompts from {source} differ from the ones the run in {folder} "
            "used (SHA-256 of the prompt list); use the same --prompts or --force"
        )
    proto = Protocol(cfg, load_models(cfg), prompts)
    start, rows = 0, []
    if resuming:
        start = proto.load_checkpoint(ckpt)
        path = os.path.join(folder, "metrics.csv")
        rows = [r for r in read_csv(path) if r["step"] < start] if os.path.exists(path) else []
    elif existing:  # force, or resume of a run that never reached a checkpoint: start over
        _clear_run(folder)
    with contextlib.suppress(FileNotFoundError):  # unsealed until this session ends
        os.remove(os.path.join(folder, results.MANIFEST))
    atomic_write_json(
        config_path,
        {
            "config": cfg.to_dict(),
            "prompt_source": source,
            "n_prompts": len(prompts),
            "prompts_sha256": digest,
            # the prompts this run's steps use: the first min(steps, n) of the order
            "prompts_used": min(cfg.steps, len(prompts)),
            "checkpoint_every": checkpoint_every,
            "versions": versions_record(),
            "torch_threads": torch.get_num_threads(),
            # reference + candidates in one token loop or two: same seed, different samples
            "generation": proto.generation_mode,
        },
        default=str,
    )

    t_start = time.perf_counter()
    bar = tqdm(
        range(start, cfg.steps),
        initial=start,
        total=cfg.steps,
        disable=not progress,
        desc=f"{cfg.agent} seed {cfg.seed}",
        file=sys.stderr,
    )
    for t in bar:
        row = proto.step(t)
        row["rss_mb"] = _rss_mb()
        rows.append(row)
        bar.set_postfix(
            step_s=f"{row['step_s']:.2f}",
            rss_mb=f"{row['rss_mb']:.0f}",
            U=f"{row['utility_winner']:.2f}",
            r=f"{row['proxy_winner']:.2f}",
        )
        write_csv(os.path.join(folder, "metrics.csv"), rows)
        if (t + 1) % checkpoint_every == 0 or t + 1 == cfg.steps:
            proto.save_checkpoint(ckpt, _checkpoint_meta(cfg, folder, t + 1))
    bar.close()
    if cfg.steps == 0 or not rows:
        write_csv(os.path.join(folder, "metrics.csv"), rows)
        proto.save_checkpoint(ckpt, _checkpoint_meta(cfg, folder, start))
    export_adapter(proto.m.policy, cfg, folder)
    atomic_write_json(
        os.path.join(folder, "summary.json"),
        _summary(cfg, rows, time.perf_counter() - t_start, folder),
        default=str,
    )
    results.write_manifest(folder, ["config.json", "metrics.csv", "summary.json"])
    return folder


def build_parser() -> OneLineParser:
    p = OneLineParser("run", __doc__)
    p.add_argument("--agent", required=True, choices=AGENTS)
    p.add_argument("--preset", default="paper", help=f"one of {', '.join(PRESETS)} (default paper)")
    p.add_argument("--policy", help="policy model: hub id or local path (default: the preset's)")
    p.add_argument("--reward-model", help="reward model: hub id or local path")
    p.add_argument("--steps", type=int, help="protocol steps (paper 500, tiny 50, smol 40)")
    p.add_argument("--candidates", type=int, help="candidates per step (default 8)")
    p.add_argument("--gamma", type=float, help="FPO penalty weight (paper 10, tiny 1)")
    p.add_argument("--prompts", metavar="SOURCE", help="builtin, ultrafeedback or a local path")
    p.add_argument("--prompt-column", help="text column of a local prompt file (default prompt)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--policy-lr", type=float, help="LoRA learning rate (paper 2e-5)")
    p.add_argument("--rm-lr", type=float, help="RM head learning rate (paper 5e-5)")
    p.add_argument("--rm-input", choices=("answer", "prompt+answer"), help="what the RM reads")
    p.add_argument("--max-prompt-tokens", type=int, help="prompt length limit (paper 256)")
    p.add_argument("--max-new-tokens", type=int, help="longest answer (default 32)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when torch sees a GPU; tiny: cpu)")
    p.add_argument("--dtype", help="float32, bfloat16 or float16 (default: bfloat16 on cuda)")
    p.add_argument("--chat-date", help="date the chat template writes (default 26 Jul 2024)")
    p.add_argument(
        "--rm-dropout-asymmetry",
        action="store_true",
        default=None,
        help="the paper's RM dropout asymmetry; runs go to OUT/<agent>+dropout-asym",
    )
    p.add_argument("--out", default="runs/llm_track", help="output root (default runs/llm_track)")
    p.add_argument("--resume", action="store_true", help="continue the run from its checkpoint")
    p.add_argument("--force", action="store_true", help="remove the run's files and start over")
    p.add_argument("--checkpoint-every", type=int, default=50, help="checkpoint period in steps")
    p.add_argument("--threads", type=int, help=THREADS_HELP)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--quiet", action="store_true", help="no result table at the end")
    return p


def main(argv: list[str] | None = None) -> int:
    return build_parser().main(argv, _main)


def _main(args) -> int:
    # the options named like an LLMConfig field (agent, policy, steps, seed, ...) set it
    fields = {f.name for f in dataclasses.fields(LLMConfig)} - {"preset"}
    cfg = preset_config(args.preset, **{k: v for k, v in vars(args).items() if k in fields})
    _set_threads(args.threads, cfg)
    try:
        folder = run_protocol(
            cfg,
            args.out,
            resume=args.resume,
            force=args.force,
            checkpoint_every=args.checkpoint_every,
            progress=not args.no_progress,
        )
    except KeyboardInterrupt:
        print("python -m llm_track.run: interrupted; continue with --resume", file=sys.stderr)
        return 130
    summary = read_json(os.path.join(folder, "summary.json"))
    print(f"{folder}: {summary['steps_done']} steps")
    if summary["steps_done"] and not args.quiet:
        # the winner's oracle utility and proxy score, first -> last window means
        u, r = (
            f"{summary[k + '_first']:.3f} -> {summary[k + '_last']:.3f}"
            for k in ("utility_winner", "proxy_winner")
        )
        print(
            f"oracle utility of the winner {u}; proxy (RM) score {r}\noracle queries "
            f"{summary['oracle_queries']}, {summary['mean_step_s']:.2f} s/step (means over the first "
            f"and last {summary['window']} steps)"
        )
        root = os.path.dirname(os.path.dirname(os.path.normpath(folder)))
        print(f"Run folder: {folder} (config.json, metrics.csv, summary.json, adapter/)")
        print(f"Evaluate:   python -m llm_track.evaluate --runs {root} --out LLM_TRACK.md")
    return 0


THREADS_HELP = "torch CPU threads (default: 1 on cpu for tiny and smol)"


def _set_threads(threads: int | None, cfg: LLMConfig | None = None) -> None:
    """``--threads``; by default one for the CPU presets (none given: ``evaluate``): on a 2-core
    machine shared with other work, torch's default threads made smol's steps 5-15 times slower."""
    import torch

    if threads is None and (cfg is None or (cfg.preset != "paper" and cfg.device == "cpu")):
        threads = 1
    if threads is not None:
        if threads < 1:
            raise LLMTrackError(f"--threads must be >= 1; got {threads}")
        torch.set_num_threads(threads)


def _quiet_libraries() -> None:
    """Silence library chatter (deprecation notes, hub hints) so errors stay one line."""
    import warnings

    warnings.filterwarnings("ignore")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        from huggingface_hub.utils import logging as hub_logging

        hub_logging.set_verbosity_error()
    except ImportError as exc:
        raise LLMTrackError('the LLM track needs the llm extra: pip install -e ".[llm]"') from exc


if __name__ == "__main__":
    sys.exit(main())
