"""Seal run folders written before run folders were sealed, after checking them.

    python -m baselines.seal RUNS [--dry-run]

Runs written by earlier releases have ``config.json``, ``metrics.csv`` and ``summary.json`` but
no ``manifest.json``, so the leaderboard skips them and reruns redo them. This command seals such
a folder only if its files agree with each other: the summary is recomputed from
``metrics.csv`` (every number must be equal, bit for bit, since both come from the same float64
history), ``metrics.csv`` has the summary's number of rounds, and the settings in
``config.json`` hash to the recorded ``config_hash``. The manifest says ``"legacy": true``, and
the leaderboard counts such runs. What it cannot check is that ``metrics.csv`` itself came from
the recorded code: replay a sample with ``python -m baselines.run --from CONFIG --any-code``.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from baselines import results

PROVENANCE = ("config_hash", "batched_with", "versions", "git_commit", "code_hash")


def check_legacy(folder: Path) -> str:
    """``""`` if the unsealed folder's files agree with each other, else the problem."""
    from baselines.run import summarise

    try:
        summary = results.read_json(folder / "summary.json")
        config = results.read_json(folder / "config.json")
        metrics = results.read_metrics(folder / "metrics.csv")
    except (OSError, ValueError, KeyError) as e:
        return f"unreadable ({type(e).__name__})"
    if not isinstance(summary, dict) or not isinstance(config, dict):
        return "summary.json or config.json is not a JSON object"
    if summary.get("status") != "ok":
        return f"status {summary.get('status')!r}"
    if not metrics or len(metrics["round"]) != summary.get("rounds"):
        return "metrics.csv does not have the summary's number of rounds"
    settings = {k: v for k, v in config.items() if k not in PROVENANCE}
    if not (
        results.config_hash(settings) == config.get("config_hash") == summary.get("config_hash")
    ):
        return "the settings do not hash to the recorded config_hash"
    try:
        again = summarise({k: v[:, None] for k, v in metrics.items()}, 0)
    except (KeyError, ValueError, IndexError) as e:
        return f"cannot recompute the summary ({type(e).__name__}: {e})"
    for key, value in again.items():
        if key not in summary:
            continue
        old = summary[key]
        same = old == value or (
            isinstance(old, float)
            and isinstance(value, float)
            and math.isnan(old)
            and math.isnan(value)
        )
        if not same:
            return f"summary.json's {key} ({old!r}) is not what metrics.csv gives ({value!r})"
    return ""


def seal_legacy(folder: Path) -> None:
    names = ["config.json", "metrics.csv", "summary.json"]
    manifest = {"files": {n: results.file_record(folder / n) for n in names}, "legacy": True}
    results.atomic_write_json(folder / results.MANIFEST, manifest)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m baselines.seal", description=__doc__.split("\n")[0])
    p.add_argument("runs", help="folder of run folders")
    p.add_argument("--dry-run", action="store_true", help="check only; write nothing")
    args = p.parse_args(argv)
    root = Path(args.runs)
    if not root.is_dir():
        print(f"python -m baselines.seal: error: RUNS: {root} is not a folder", file=sys.stderr)
        return 2
    sealed = refused = 0
    for summary in sorted(root.rglob("seed_*/summary.json")):
        folder = summary.parent
        if (folder / results.MANIFEST).exists():
            continue
        lock = results.RunLock(folder)
        if not lock.acquire():
            print(f"skipping {folder}: another process is writing it", file=sys.stderr)
            continue
        try:
            why = check_legacy(folder)
            if why:
                refused += 1
                print(f"not sealing {folder}: {why}", file=sys.stderr)
            elif not args.dry_run:
                seal_legacy(folder)
                sealed += 1
            else:
                sealed += 1
        finally:
            lock.release()
    verb = "would seal" if args.dry_run else "sealed"
    print(f"{verb} {sealed} run folder(s); {refused} refused")
    return 0


if __name__ == "__main__":
    sys.exit(main())
