"""Writes a static leaderboard site, OUT/index.html and the figures, from a results folder.

    python -m baselines.site [--results results] [--out leaderboard/site] [--force]

Tables: leaderboard.csv per env, families/board_*.csv, comparisons*.csv; no network at view time.
"""

from __future__ import annotations

import csv
import io
import shutil
import sys
from html import escape
from pathlib import Path

from baselines import cli, results
from baselines.plan import CLIError

TEMPLATE = Path(__file__).with_name("site_template.html")
COSTS = ("reads", "_used", "_calls", "_queries", "wall_time_s")  # columns that end so: last


def _read(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))


def _num(v: str) -> str:
    try:
        return f"{x:.0f}" if (x := float(v)).is_integer() else f"{x:.4g}"
    except ValueError:
        return v


def _ci(c: str, cols: list[str]) -> tuple[str, str] | None:
    """The columns of ``c``'s 95 % CI: ``c_ci_low/high``, ``c_lo/hi`` or ``PREFIX_lo/hi``."""
    ends = (("_ci_low", "_ci_high"), ("_lo", "_hi"))
    pairs = [(s + lo, s + hi) for lo, hi in ends for s in (c, c.split("_")[0])]
    return next((p for p in pairs if set(p) <= set(cols) and c not in p), None)


def table(rows: list[dict[str, str]], caption: str) -> str:
    """CSV ``rows`` as a table: raw values in ``data-v``, ``value [lo, hi]`` for a CI, costs last."""
    cols = [c for c in (rows or [{}])[0] if c != "env_id" and not c.endswith("_iqm")]
    cis = {c: _ci(c, cols) for c in cols}
    cols = [c for c in cols if not any(c in ci for ci in cis.values() if ci)]
    cols = sorted((c for c in cols if any(r[c] for r in rows)), key=lambda c: c.endswith(COSTS))

    def cell(r: dict[str, str], c: str) -> str:
        ci = f"[{_num(r[cis[c][0]])}, {_num(r[cis[c][1]])}]" if cis[c] and r[c] else ""
        return f'<td data-v="{escape(r[c])}">{escape(_num(r[c]))}<small>{escape(ci)}</small></td>'

    th = '<th data-c="{0}">{0}<small>{1}</small></th>'.format
    head = "".join(th(escape(c), "95 % CI" * bool(cis[c])) for c in cols)
    body = "".join("<tr>" + "".join(cell(r, c) for c in cols) + "</tr>" for r in rows)
    return f"<table><caption>{escape(caption)}</caption><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def write_site(results_dir: Path, out: Path) -> Path:
    """Write ``out/index.html`` from ``results_dir`` and copy its figures into ``out``."""
    res, out, sections = Path(results_dir), Path(out), []  # (anchor, title, tables, figure key)
    rows = _read(res / "leaderboard.csv") if (res / "leaderboard.csv").exists() else []
    for env in dict.fromkeys(r["env_id"] for r in rows):
        mine = [r for r in rows if r["env_id"] == env]
        sections.append((env, f"Leaderboard: {env}", [table(mine, "leaderboard.csv")], env + "_"))
    for p in sorted((res / "families").glob("board_*.csv")):
        name = p.stem.removeprefix("board_")
        tables = [table(_read(p), f"families/{p.name}")]
        sections.append(("board-" + name, f"Family board: {name}", tables, f"_{name}.png"))
    found = sorted(res.rglob("comparisons*.csv"))
    tables = [table(_read(p), str(p.relative_to(res))) for p in found]
    sections += [("comparisons", "Comparisons", tables, "\0")] if found else []
    if not sections:
        raise CLIError(f"no leaderboard, family board or comparisons CSV under {res}")
    figs = {a: [] for a, *_ in sections} | {"figures": []}
    keys = sorted(((k, a) for a, _, _, k in sections), key=lambda ka: -len(ka[0]))
    # its PNGs, less those of nested result sets (a leaderboard of their own) and sites
    nested = [p.parent for n in ("*/leaderboard.csv", "*/index.html") for p in res.rglob(n)]
    for png in sorted(res.rglob("*.png")):
        if any(d.resolve() in png.resolve().parents for d in [*nested, out]):
            continue
        rel = png.relative_to(res)
        figs[next((a for k, a in keys if k in rel.name), "figures")].append(rel.as_posix())
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(png, out / rel)
    sections += [("figures", "Other figures", [], "")] if figs["figures"] else []
    img = '<figure><img src="{0}" alt="{0}"><figcaption>{0}</figcaption></figure>'.format
    sec = '<section id="{}"><h2>{}</h2>{}{}</section>'.format
    body = "".join(
        sec(escape(a), escape(t), "".join(tabs), "".join(map(img, map(escape, figs[a]))))
        for a, t, tabs, _ in sections
    )
    page = TEMPLATE.read_text(encoding="utf-8").replace("{{body}}", body)
    results.atomic_write_text(out / "index.html", page)
    return out / "index.html"


def main(argv: list[str] | None = None) -> int:
    p = cli.command("baselines.site", __doc__, cli.PUBLISH)
    p.add_argument("--results", default="results", help="the results folder (default results/)")
    p.add_argument("--out", default="leaderboard/site", help="where index.html and figures go")
    try:
        args = p.parse_args(argv)
        cli.refuse_committed(args.out, "--out", args.force)
        cli.check_writable(args.out)
        print(f"wrote {write_site(Path(args.results), Path(args.out))}")
    except CLIError as e:
        return p.fail(e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
