"""The result a run command ends with: one compact table per (env, agent) over its seeds.

``python -m baselines.run`` and ``baselines.sweep`` print it after their runs (``--quiet`` turns
it off); it is read back from the sealed run folders, so it shows exactly what was written,
finished runs from earlier commands included.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from baselines import results, stats

COLUMNS = (
    "env",
    "agent",
    "runs",
    "final U [95% CI]",
    "peak U",
    "drop",
    "proxy-truth gap",
    "labels",
    "oracle queries",
    "s/run",
)


def rows(folders: list[Path]) -> list[dict[str, Any]]:
    """One row per (env, run name) over the sound finished runs among ``folders``.

    ``final U`` is the mean over seeds of ``final_true_utility`` with a percentile bootstrap
    95 % CI (:func:`baselines.stats.mean_ci`); ``peak U``, ``drop`` (peak minus the last
    block, see :func:`baselines.results.summarise_history`), ``gap`` (proxy minus truth at the
    end), ``labels`` (the RM's labels), ``oracle queries`` (the agent's own calls on the truth,
    as value queries) and ``s/run`` are means over seeds.
    """
    df = results.load_runs(folders)
    out = []
    for (env_id, name), part in df.groupby(["env_id", "run_name"], sort=False) if len(df) else []:
        u, lo, hi = stats.mean_ci(part["final_true_utility"])
        out.append(
            {
                "env": env_id,
                "agent": name,
                "runs": len(part),
                "final_u": u,
                "final_u_lo": lo,
                "final_u_hi": hi,
                **{
                    k: float(part[col].mean())
                    for k, col in (
                        ("peak_u", "peak_true_utility"),
                        ("drop", "collapse_drop"),
                        ("gap", "final_gap"),
                        ("labels", "labels_used"),
                        ("oracle", "oracle_value_equivalents"),
                        ("s_per_run", "wall_time_s"),
                    )
                },
            }
        )
    return out


def table(rows_: list[dict[str, Any]]) -> str:
    """The rows as an aligned plain-text table."""
    cells = [list(COLUMNS)]
    for r in rows_:
        cells.append(
            [
                r["env"],
                r["agent"],
                str(r["runs"]),
                f"{r['final_u']:.3f} [{r['final_u_lo']:.3f}, {r['final_u_hi']:.3f}]",
                f"{r['peak_u']:.3f}",
                f"{r['drop']:.3f}",
                f"{r['gap']:.3f}",
                f"{r['labels']:.0f}",
                f"{r['oracle']:.0f}",
                f"{r['s_per_run']:.2f}",
            ]
        )
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def print_result(folders: list[Path], out: str | Path) -> None:
    """The table, where it came from, and what to run next."""
    rows_ = rows(folders)
    if not rows_:
        return
    print()
    print(table(rows_))
    print(
        "\nU: true utility (hidden from the agent); drop: peak minus the last 5 % of rounds; "
        "gap: RM score minus U at the end."
    )
    print(f"Run folders: {out}/ENV/AGENT/seed_S (config.json, metrics.csv, summary.json)")
    print(f"Curves:      python -m baselines.plot {out}")
    print(f"Leaderboard: python -m baselines.leaderboard --runs {out}")
