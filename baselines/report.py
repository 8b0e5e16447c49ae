"""The result a run command ends with: one compact table per (env, agent) over its seeds.

``python -m baselines.run`` and ``baselines.sweep`` print it after their runs (``--quiet`` turns
it off); it is read back from the sealed run folders, so it shows exactly what was written,
finished runs from earlier commands included.
"""

from __future__ import annotations

from pathlib import Path

from baselines import results, stats

#: (header, summary column, format) of the means over seeds that follow final U
MEANS = (
    ("peak U", "peak_true_utility", ".3f"),
    ("drop", "collapse_drop", ".3f"),
    ("proxy-truth gap", "final_gap", ".3f"),
    ("labels", "labels_used", ".0f"),
    ("oracle queries", "oracle_value_equivalents", ".0f"),
    ("s/run", "wall_time_s", ".2f"),
)
HEADERS = ("env", "agent", "runs", "final U [95% CI]", *(h for h, _, _ in MEANS))


def rows(folders: list[Path]) -> list[list[str]]:
    """The table's cells: one row per (env, run name) over the sound finished runs among
    ``folders``; ``final U`` with a percentile bootstrap 95 % CI (:func:`baselines.stats.mean_ci`),
    ``oracle queries`` the agent's own calls on the truth, as value queries."""
    df = results.load_runs(folders)
    out = []
    for (env_id, name), part in df.groupby(["env_id", "run_name"], sort=False) if len(df) else []:
        u, lo, hi = stats.mean_ci(part["final_true_utility"])
        means = [format(float(part[col].mean()), fmt) for _, col, fmt in MEANS]
        out.append([env_id, name, str(len(part)), f"{u:.3f} [{lo:.3f}, {hi:.3f}]", *means])
    return out


def markdown_table(headers: list[str], rows: list[list]) -> list[str]:
    """The lines of a Markdown table (cells written with ``str``)."""
    line = lambda cells: "| " + " | ".join(map(str, cells)) + " |"  # noqa: E731
    return [line(headers), "|" + "---|" * len(headers), *map(line, rows)]


def table(rows_: list[list[str]]) -> str:
    """The rows as an aligned plain-text table."""
    cells = [list(HEADERS), *rows_]
    widths = [max(len(row[i]) for row in cells) for i in range(len(HEADERS))]
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
