"""Per-round curves of any run folders: mean over seeds with a 95 % CI band, one colour per agent.

Examples::

    python -m baselines.plot runs
    python -m baselines.plot runs/RLHFBlindSpot-v0/naive runs/RLHFBlindSpot-v0/fpo --out plots
    python -m baselines.plot runs --metric true_utility gap --smooth 20

``RUNS`` are folders: run folders (``OUT/ENV/AGENT/seed_S`` with ``metrics.csv`` and
``summary.json``, as ``baselines.run`` and ``baselines.sweep`` write them) or any folders above
them. Runs are grouped by env (the summary's ``env_id``) and agent (the name of the folder above
``seed_S``: the run name, with its ``@tag`` or ``+algo``). Each env gets one figure,
``OUT/ENV.png`` and ``OUT/ENV.svg``, with one panel per ``--metric`` (default: true utility and
proxy reward): the mean over seeds per RM round and its 95 % confidence interval (Student t over
seeds; none for a single seed). White-box runs record the policy mean's ``true_utility`` and
``proxy_reward``; SB3 runs only the sampled responses' ``sample_true_utility`` and
``sample_proxy_reward``, which stand in for them (the axis says which).

Damaged run folders (unfinished, failed, unreadable, missing the metric, non-finite values) are
skipped with one line each on stderr. Runs of one group with different lengths are cut to the
shortest (one line says so).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from baselines import results
from baselines.plan import CLIError

DEFAULT_METRICS = ("true_utility", "proxy_reward")
LABELS = {
    "true_utility": "true utility U (hidden from the agent)",
    "proxy_reward": "proxy reward r (the current RM's score)",
    "gap": "proxy - true utility",
    "rm_error": "RM error |r - U| on submitted responses",
    "signal_norm": "signal norm |y[:k]|",
    "noise_norm": "noise norm |y[k:]|",
    "labels_used": "labels used (cumulative)",
    "oracle_queries": "oracle value queries (cumulative)",
}
#: SB3 runs record the sampled responses' values only; these stand in for the policy mean's
SAMPLED = {"true_utility": "sample_true_utility", "proxy_reward": "sample_proxy_reward"}
SAMPLED["gap"] = "sample_gap"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage dump
        raise CLIError(message)


@dataclass
class Run:
    env_id: str
    agent: str
    seed: int
    folder: Path
    metrics: dict[str, np.ndarray]


def find_runs(paths: list[Path]) -> list[Path]:
    """The run folders (holding a ``summary.json``) at or below ``paths``, sorted, no duplicates."""
    found: set[Path] = set()
    for p in paths:
        if (p / "summary.json").is_file():
            found.add(p.resolve())
        found.update(s.parent.resolve() for s in p.rglob("summary.json"))
    return sorted(found)


def load_run(folder: Path) -> Run:
    """One finished run; ``ValueError`` with the reason if it cannot be read."""
    try:
        summary = json.loads((folder / "summary.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"unreadable summary.json ({type(e).__name__})") from None
    if not isinstance(summary, dict):
        raise ValueError("summary.json is not an object")
    if summary.get("status") != "ok":
        raise ValueError(f"status {summary.get('status')!r}, not 'ok'")
    try:
        m = results.read_metrics(folder / "metrics.csv")
    except FileNotFoundError:
        raise ValueError("no metrics.csv") from None
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"unreadable metrics.csv ({type(e).__name__})") from None
    if not m:
        raise ValueError("empty metrics.csv")
    env_id = summary.get("env_id") or folder.parent.parent.name
    import rlhf_envs

    if env_id not in rlhf_envs.ENV_IDS:  # it names the output files: never a path
        raise ValueError(f"unknown env_id {str(env_id)[:60]!r}")
    if why := results.verify(folder):
        raise ValueError(why)
    seed = summary.get("seed", folder.name.removeprefix("seed_"))
    try:
        seed = int(seed)
    except (TypeError, ValueError):
        raise ValueError(f"seed {seed!r} is not an int") from None
    return Run(str(env_id), folder.parent.name, seed, folder, m)


def check_metrics(run: Run, metrics: list[str]) -> None:
    """``ValueError`` with the reason if ``run`` lacks a finite column for one of ``metrics``."""
    for name in metrics:
        col = column(run.metrics, name)
        if col is None:
            raise ValueError(f"metrics.csv has no {name!r} column")
        if not np.isfinite(run.metrics[col]).all():
            raise ValueError(f"non-finite values in {col!r}")


def column(m: dict[str, np.ndarray], name: str) -> str | None:
    """The column of ``m`` that shows ``name``: itself, or its sampled stand-in (SB3 runs)."""
    if name in m:
        return name
    alt = SAMPLED.get(name)
    return alt if alt in m else None


def mean_ci(x: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over seeds (rows) and its Student-t confidence interval; one row: no interval."""
    from scipy import stats

    mean = x.mean(0)
    if len(x) < 2:
        return mean, mean, mean
    half = stats.t.ppf(0.5 + level / 2, len(x) - 1) * x.std(0, ddof=1) / np.sqrt(len(x))
    return mean, mean - half, mean + half


def _smooth(x: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average over rounds (the first rounds average what there is)."""
    if window <= 1:
        return x
    c = np.cumsum(np.pad(x, [(0, 0), (1, 0)]), axis=1)
    n = np.arange(1, x.shape[1] + 1)
    lo = np.maximum(n - window, 0)
    return (c[:, n] - c[:, lo]) / (n - lo)


def _order(agent: str) -> tuple:
    base = agent.split("@")[0].split("+")[0]
    first = ("naive", "static", "kl", "ensemble", "fpo", "fpo-relaxed", "fpo-exact", "oracle")
    return (first.index(base) if base in first else len(first), agent)


def plot_env(env_id: str, groups: dict[str, list[Run]], metrics: list[str], out: Path,
             smooth: int = 1) -> list[Path]:  # fmt: skip
    """One figure for one env: a panel per metric, a curve and CI band per agent."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    agents = sorted(groups, key=_order)
    colours = {a: plt.cm.tab10(i % 10) if len(agents) <= 10 else plt.cm.tab20(i % 20)
               for i, a in enumerate(agents)}  # fmt: skip
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics) + 2.2, 4.2))
    axes = np.atleast_1d(axes)
    for ax, name in zip(axes, metrics, strict=True):
        used: set[str] = set()
        for agent in agents:
            runs = groups[agent]
            cols = [column(r.metrics, name) for r in runs]
            used.update(cols)
            n = min(len(r.metrics[c]) for r, c in zip(runs, cols, strict=True))
            x = np.stack([r.metrics[c][:n] for r, c in zip(runs, cols, strict=True)])
            mean, lo, hi = mean_ci(_smooth(x, smooth))
            rounds = np.arange(1, n + 1)
            # earlier agents drawn wider, so that curves lying on each other all show
            lw = 4.0 - 3.0 * agents.index(agent) / max(len(agents) - 1, 1)
            style = {"color": colours[agent], "ls": "--" if "@" in agent else "-", "lw": lw}
            ax.plot(rounds, mean, label=f"{agent} (n={len(runs)})", **style)
            if len(runs) > 1:
                ax.fill_between(rounds, lo, hi, color=colours[agent], alpha=0.18, lw=0)
        what = LABELS.get(name, name)
        sampled = [c for c in used if c != name]
        if sampled and name in used:
            what += "\n(policy mean; sampled responses where only those are recorded)"
        elif sampled:
            what += "\n(sampled responses)"
        elif name in SAMPLED:
            what += "\n(policy mean)"
        ax.set_ylabel(what, fontsize=9)
        ax.set_xlabel("RM round" + (f" (moving average over {smooth})" if smooth > 1 else ""))
        ax.set_title(LABELS.get(name, name).split(" (")[0], fontsize=11)
        ax.grid(alpha=0.3)
    seeds = sorted({len(g) for g in groups.values()})
    fig.suptitle(
        f"{env_id}: mean over seeds per RM round, 95 % CI band (Student t); "
        f"{'/'.join(map(str, seeds))} seeds per agent",
        fontsize=11,
    )
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1 - 2.0 / fig.get_size_inches()[0], 0.95))
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{env_id}.png", out / f"{env_id}.svg"]
    fig.savefig(paths[0], dpi=120)
    fig.savefig(paths[1])
    plt.close(fig)
    return paths


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m baselines.plot",
        description="Plot per-round metrics of run folders (mean and 95 % CI over seeds).",
    )
    p.add_argument("runs", nargs="+", metavar="RUNS", help="run folders or folders above them")
    p.add_argument("--out", default="plots", help="where to write ENV.png/.svg (default plots/)")
    p.add_argument(
        "--metric",
        nargs="+",
        default=list(DEFAULT_METRICS),
        help="metrics.csv columns, one panel each (default: true_utility proxy_reward)",
    )
    p.add_argument("--env", nargs="+", default=None, help="only these env ids")
    p.add_argument("--agents", nargs="+", default=None, help="only these agents (run names)")
    p.add_argument("--smooth", type=int, default=1, help="moving average over rounds (default 1)")
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        paths = [Path(r) for r in args.runs]
        for p in paths:
            if not p.is_dir():
                raise CLIError(f"RUNS: {str(p)!r} is not a folder")
        if len(set(args.metric)) != len(args.metric):
            raise CLIError(f"--metric: a metric is listed twice: {args.metric}")
        if args.smooth < 1:
            raise CLIError(f"--smooth must be >= 1, got {args.smooth}")
        folders = find_runs(paths)
        if not folders:
            raise CLIError(f"RUNS: no run folders (with a summary.json) under {args.runs}")
        loaded = []
        for folder in folders:
            try:
                loaded.append(load_run(folder))
            except ValueError as e:
                print(f"skipping {folder}: {e}", file=sys.stderr)
        for flag, wanted, have in (
            ("--env", args.env, {r.env_id for r in loaded}),
            ("--agents", args.agents, {r.agent for r in loaded}),
        ):
            missing = sorted(set(wanted or ()) - have)
            if missing:
                raise CLIError(f"{flag}: no runs of {missing}; found: {sorted(have)}")
        loaded = [
            r
            for r in loaded
            if (not args.env or r.env_id in args.env)
            and (not args.agents or r.agent in args.agents)
        ]
        columns = set().union(*(r.metrics for r in loaded)) if loaded else set()
        for name in args.metric:
            if loaded and not any(column(r.metrics, name) for r in loaded):
                raise CLIError(
                    f"--metric: no run records {name!r}; columns: {', '.join(sorted(columns))}"
                )
    except CLIError as e:
        print(f"python -m baselines.plot: error: {e}", file=sys.stderr)
        return 2
    groups: dict[str, dict[str, list[Run]]] = {}
    for run in loaded:
        try:
            check_metrics(run, args.metric)
        except ValueError as e:
            print(f"skipping {run.folder}: {e}", file=sys.stderr)
            continue
        groups.setdefault(run.env_id, {}).setdefault(run.agent, []).append(run)
    if not groups:
        print(
            "python -m baselines.plot: error: no run to plot (see the lines above)", file=sys.stderr
        )
        return 1
    for env_id, by_agent in sorted(groups.items()):
        for agent, runs in by_agent.items():
            lengths = {len(next(iter(r.metrics.values()))) for r in runs}
            if len(lengths) > 1:
                print(
                    f"{env_id} {agent}: runs of {sorted(lengths)} rounds; plotting the first "
                    f"{min(lengths)}",
                    file=sys.stderr,
                )
        for path in plot_env(env_id, by_agent, args.metric, Path(args.out), args.smooth):
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
