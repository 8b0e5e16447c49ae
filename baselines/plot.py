"""Per-round curves of any run folders: mean over seeds with a 95 % CI band, one colour per agent.

Examples::

    python -m baselines.plot runs
    python -m baselines.plot runs/RLHFBlindSpot-v0/naive runs/RLHFBlindSpot-v0/fpo --out plots
    python -m baselines.plot runs --metric true_utility gap --smooth 20

``RUNS`` are run folders (``OUT/ENV/AGENT/seed_S``) or any folders above them, grouped by env and
run name. Each env gets ``OUT/ENV.png`` and ``OUT/ENV.svg``, one panel per ``--metric`` (Student-t
CIs); SB3 runs' ``sample_`` columns stand in for the policy mean's (the axis says which).

Damaged run folders are skipped with one line each on stderr; runs of one group with different
lengths are cut to the shortest (one line says so).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from baselines import cli, results, stats
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
SAMPLED = {k: f"sample_{k}" for k in ("true_utility", "proxy_reward", "gap")}


def check_metrics(m: dict[str, np.ndarray], metrics: list[str]) -> None:
    """``ValueError`` with the reason if ``m`` lacks a finite column for one of ``metrics``."""
    for name in metrics:
        col = column(m, name)
        if col is None:
            raise ValueError(f"metrics.csv has no {name!r} column")
        if not np.isfinite(m[col]).all():
            raise ValueError(f"non-finite values in {col!r}")


def column(m: dict[str, np.ndarray], name: str) -> str | None:
    """The column of ``m`` that shows ``name``: itself, or its sampled stand-in (SB3 runs)."""
    if name in m:
        return name
    alt = SAMPLED.get(name)
    return alt if alt in m else None


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


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (files only, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: Path, dpi: int = 110) -> Path:
    """Lay ``fig`` out tightly, write it to ``path`` and close it."""
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    return path


def plot_env(env_id: str, groups: dict[str, list[dict]], metrics: list[str], out: Path,
             smooth: int = 1) -> list[Path]:  # fmt: skip
    """One figure for one env: a panel per metric, a curve and CI band per agent."""
    plt = pyplot()
    agents = sorted(groups, key=_order)
    colours = {a: plt.cm.tab10(i % 10) if len(agents) <= 10 else plt.cm.tab20(i % 20)
               for i, a in enumerate(agents)}  # fmt: skip
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics) + 2.2, 4.2))
    axes = np.atleast_1d(axes)
    for ax, name in zip(axes, metrics, strict=True):
        used: set[str] = set()
        for agent in agents:
            runs = groups[agent]
            cols = [column(m, name) for m in runs]
            used.update(cols)
            n = min(len(m[c]) for m, c in zip(runs, cols, strict=True))
            x = np.stack([m[c][:n] for m, c in zip(runs, cols, strict=True)])
            mean, lo, hi = stats.t_ci(_smooth(x, smooth))
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


def build_parser() -> cli.Parser:
    p = cli.command("baselines.plot", __doc__)
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
    p.add_argument(
        "--smooth", type=cli.positive_int, default=1, help="moving average over rounds (default 1)"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    try:
        args = p.parse_args(argv)
        paths = [Path(r) for r in args.runs]
        for path in paths:
            if not path.is_dir():
                raise CLIError(f"RUNS: {str(path)!r} is not a folder")
        if len(set(args.metric)) != len(args.metric):
            raise CLIError(f"--metric: a metric is listed twice: {args.metric}")
        runs = results.load_runs(paths, metrics=True)
        if runs.empty:
            raise CLIError(f"RUNS: no finished run folders under {args.runs}")
        for flag, wanted, have in (
            ("--env", args.env, set(runs.env_id)),
            ("--agents", args.agents, set(runs.run_name)),
        ):
            missing = sorted(set(wanted or ()) - have)
            if missing:
                raise CLIError(f"{flag}: no runs of {missing}; found: {sorted(have)}")
        runs = runs[runs.env_id.isin(args.env or runs.env_id)]
        runs = runs[runs.run_name.isin(args.agents or runs.run_name)]
        columns = set().union(*runs.metrics)
        for name in args.metric:
            if not any(column(m, name) for m in runs.metrics):
                raise CLIError(
                    f"--metric: no run records {name!r}; columns: {', '.join(sorted(columns))}"
                )
    except CLIError as e:
        return p.fail(e)
    groups: dict[str, dict[str, list[dict]]] = {}
    for r in runs.itertuples():
        try:
            check_metrics(r.metrics, args.metric)
        except ValueError as e:
            print(f"skipping {r.folder}: {e}", file=sys.stderr)
            continue
        groups.setdefault(r.env_id, {}).setdefault(r.run_name, []).append(r.metrics)
    if not groups:
        return p.fail("no run to plot (see the lines above)", 1)
    for env_id, by_agent in sorted(groups.items()):
        for agent, runs in by_agent.items():
            lengths = {len(next(iter(m.values()))) for m in runs}
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
