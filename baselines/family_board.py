"""Env families: the learnability check that fixes the splits (and the family runs' helpers).

    python -m baselines.family_board check ENV [--split train|test|both] [--candidates N]
                                              [--jobs 2] [--out runs/families]
                                              [--results results/families]

``check`` draws the first ``N`` candidates of a split from the env's family distribution
(:func:`rlhf_envs.families.candidates`), runs the oracle and naive on each with the check seeds
200-209 (neither the tuning seeds 100-109 nor the reporting seeds 0-9) for the family's rounds
(:data:`rlhf_envs.families.ROUNDS`), through the sweep machinery (resumable), and writes
``RESULTS/check_ENV.csv``: per candidate, the oracle's and naive's mean final true utility and
naive's collapse drop with 95 % bootstrap CIs, whether the candidate is learnable (the oracle's
mean final U >= 90 % of the peak utility) and whether naive collapses (mean drop >= 0.5, 5 % of
the peak, with the CI above 0). It prints the first :data:`~rlhf_envs.families.SIZE` learnable
candidates of each split as the literal to freeze in ``rlhf_envs/families.py``. Only the oracle
and naive run here: no agent's setting is chosen on these runs.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from baselines import results, stats
from baselines.run import CLIError, _Parser, execute, run_folder_name
from baselines.sweep import longest_first, plan_sweep, write_summary

CHECK_SEEDS = list(range(200, 210))
TUNE_SEEDS = list(range(100, 110))
TEST_SEEDS = list(range(0, 10))
#: learnable: the oracle's mean final U reaches this share of the peak utility
LEARNABLE = 0.9
PEAK = 10.0  # utility_scale: not a family knob
#: naive collapses: mean drop at least this (5 % of the peak) with its CI above 0
COLLAPSE_DROP = 0.5


def _summaries(out: Path, env_id: str, run_name: str, seeds: list[int]) -> list[dict[str, Any]]:
    found = []
    for s in seeds:
        folder = results.run_dir(out, env_id, run_name, s)
        if not results.verify(folder):
            summary = json.loads((folder / "summary.json").read_text())
            if summary.get("status") == "ok":
                found.append(summary)
    return found


def _mean_ci(v: list[float]) -> tuple[float, float, float]:
    a = np.asarray(v, dtype=float)
    if len(a) == 0:
        return (float("nan"),) * 3
    lo, hi = stats.bootstrap_ci(a, n_boot=2000)
    return float(a.mean()), float(lo), float(hi)


def check(env_id: str, splits: list[str], n: int, jobs: int, out: Path, res: Path) -> list[dict]:
    """Run the check (see the module docstring); returns the CSV rows."""
    from rlhf_envs import families

    cands = {split: families.candidates(env_id, split, n) for split in splits}
    entries = []
    for split, items in cands.items():
        for i, kw in enumerate(items):
            for agent in ("oracle", "naive"):
                entries.append(
                    {"agent": agent, "tag": f"{split}{i}", "env_kwargs": kw, "envs": [env_id]}
                )
    spec = {
        "envs": [env_id],
        "agents": entries,
        "seeds": CHECK_SEEDS,
        "rounds": families.ROUNDS[env_id],
    }
    jobs_, folders = plan_sweep(spec, out, False, jobs, max_runs=100_000)
    t0 = time.perf_counter()
    outcomes = execute(longest_first(jobs_), jobs, show_progress=False)
    write_summary(out, folders, outcomes, time.perf_counter() - t0)
    rows = []
    for split, items in cands.items():
        for i, kw in enumerate(items):
            o = _summaries(out, env_id, run_folder_name("oracle", tag=f"{split}{i}"), CHECK_SEEDS)
            nv = _summaries(out, env_id, run_folder_name("naive", tag=f"{split}{i}"), CHECK_SEEDS)
            ou = _mean_ci([s["final_true_utility"] for s in o])
            nu = _mean_ci([s["final_true_utility"] for s in nv])
            nd = _mean_ci([s["collapse_drop"] for s in nv])
            rows.append(
                {
                    "split": split,
                    "candidate": i,
                    **{k: kw[k] for k in sorted(kw)},
                    "oracle_final_u": ou[0],
                    "oracle_final_u_lo": ou[1],
                    "oracle_final_u_hi": ou[2],
                    "naive_final_u": nu[0],
                    "naive_final_u_lo": nu[1],
                    "naive_final_u_hi": nu[2],
                    "naive_drop": nd[0],
                    "naive_drop_lo": nd[1],
                    "naive_drop_hi": nd[2],
                    "seeds": min(len(o), len(nv)),
                    "learnable": bool(ou[0] >= LEARNABLE * PEAK),
                    "naive_collapses": bool(nd[0] >= COLLAPSE_DROP and nd[1] > 0),
                }
            )
    res.mkdir(parents=True, exist_ok=True)
    results.write_csv(res / f"check_{env_id}.csv", rows, lineterminator="\n")
    return rows


def frozen_literal(env_id: str, rows: list[dict], size: int) -> str:
    """The ``CANDIDATE_INDEX`` and ``FAMILIES`` entries of ``env_id`` from the check rows."""
    from rlhf_envs import families

    knobs = list(families.DISTRIBUTIONS[env_id])
    index, lists = {}, {}
    for split in families.SPLITS:
        ok = [r for r in rows if r["split"] == split and r["learnable"]][:size]
        index[split] = tuple(r["candidate"] for r in ok)
        lists[split] = tuple({k: r[k] for k in knobs} for r in ok)
    return f"{env_id!r}: {index!r}\n{env_id!r}: {lists!r}"


def main(argv: list[str] | None = None) -> int:
    p = _Parser(prog="python -m baselines.family_board", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    c = sub.add_parser("check", help="learnability and collapse of a family's candidates")
    c.add_argument("env", help="RLHFBlindSpot-v0 or RLHFNeuralBlindSpot-v0")
    c.add_argument("--split", default="both", help="train, test or both (default)")
    c.add_argument("--candidates", type=int, default=24, help="draws per split (default 24)")
    c.add_argument("--jobs", type=int, default=2)
    c.add_argument("--out", default="runs/families/check", help="run folders")
    c.add_argument("--results", default="results/families", help="where check_ENV.csv goes")
    start = time.perf_counter()
    try:
        args = p.parse_args(argv)
        from rlhf_envs import families

        if args.env not in families.DISTRIBUTIONS:
            raise CLIError(f"env: {args.env!r} has no family; families: {list(families.ENV_INDEX)}")
        if args.split not in (*families.SPLITS, "both"):
            raise CLIError(f"--split must be train, test or both, got {args.split!r}")
        if args.candidates < 1:
            raise CLIError(f"--candidates must be >= 1, got {args.candidates}")
        if args.jobs < 1:
            raise CLIError(f"--jobs must be >= 1, got {args.jobs}")
    except CLIError as e:
        print(f"python -m baselines.family_board: error: {e}", file=sys.stderr)
        return 2
    splits = list(families.SPLITS) if args.split == "both" else [args.split]
    rows = check(args.env, splits, args.candidates, args.jobs, Path(args.out), Path(args.results))
    for split in splits:
        part = [r for r in rows if r["split"] == split]
        ok = [r for r in part if r["learnable"]]
        col = [r for r in ok[: families.SIZE] if r["naive_collapses"]]
        print(
            f"{args.env} {split}: {len(ok)}/{len(part)} candidates learnable; naive collapses in "
            f"{len(col)}/{min(len(ok), families.SIZE)} of the first {families.SIZE} learnable",
            file=sys.stderr,
        )
    print(frozen_literal(args.env, rows, families.SIZE))
    print(f"wall time {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
