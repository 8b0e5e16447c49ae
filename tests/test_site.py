"""The leaderboard site (baselines.site) in a real headless Chromium: it loads without console
errors or failed requests, a header click sorts rows numerically both ways, and the cells show
the CSVs' numbers. Skipped only where no chromium executable exists (CI installs Debian's; the
driver is the playwright package of the ``test`` extra, launched on that executable).

``SITE_SCREENSHOT=PATH`` also saves the screenshot of the real results' site to PATH.
"""

from __future__ import annotations

import csv
import math
import os
import re
import shutil
from pathlib import Path

import pytest

from baselines import site
from baselines.plan import CLIError

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "chrome"))), None)
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium executable on PATH (apt-get install chromium)"
)

LEADERBOARD = """env_id,agent,seeds,final_true_utility,final_true_utility_ci_low,final_true_utility_ci_high,final_true_utility_iqm,reads,labels_used,oracle_queries,oracle_grad_queries,labeler_calls,wall_time_s
EnvA-v0,naive,10,9.5,9,10,9.4,current_rm,300,0,0,300,0.5
EnvA-v0,<b>bold</b> & co,10,10.25,10,10.5,10.2,"current_rm,rm_buffer",300,300,0,600,1.5
EnvA-v0,oracle,10,1e2,99,101,100,truth_grads,300,0,300,15600,2
EnvA-v0,static,10,-10,-11,-9,-10,initial_rm,300,0,0,300,0.25
EnvB-v0,naive,5,1.5,1,2,1.5,current_rm,50,0,0,50,0.1
"""
BOARD = """agent,setting,reads,labeler_calls,iqm,iqm_lo,iqm_hi,mean,mean_lo,mean_hi,poi_vs_naive,poi_lo,poi_hi
naive,{},current_rm,300.0,0.001,-0.006,0.005,0,-0.009,0.01,0.5,0.43,0.57
elite-anchor,"{""anchor_coef"": 1.0}","current_rm,rm_buffer",300.0,0.42,0.4,0.44,0.41,0.39,0.43,0.93,0.9,0.96
"""
COMPARISONS = """page,env,a,b,metric,n,difference,difference_lo,difference_hi,p_improvement,p_lo,p_hi,verdict
leaderboard,EnvA-v0,oracle,naive,final_true_utility,10,90.5,89,92,1,1,1,better
leaderboard,EnvA-v0,static,naive,final_true_utility,10,-11.5,-13,-10,0,0,0.01,worse
"""


def _results(tmp_path: Path) -> Path:
    res = tmp_path / "results"
    (res / "families").mkdir(parents=True)
    (res / "figures").mkdir()
    (res / "runs" / "x").mkdir(parents=True)
    (res / "leaderboard.csv").write_text(LEADERBOARD)
    (res / "families" / "board_EnvA-v0.csv").write_text(BOARD)
    (res / "runs" / "x" / "comparisons_leaderboard.csv").write_text(COMPARISONS)
    png = next((ROOT / "results" / "figures").glob("*.png"))
    shutil.copyfile(png, res / "figures" / "EnvA-v0_true_utility.png")
    return res


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def test_cli_refuses_committed_results_and_empty_folders(tmp_path, capsys):
    assert site.main(["--out", str(ROOT / "results" / "site")]) == 2
    assert "--force" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    with pytest.raises(CLIError, match="no leaderboard"):
        site.write_site(tmp_path / "empty", tmp_path / "out")


def test_page_escapes_values_and_places_figures(tmp_path):
    res = _results(tmp_path)
    assert site.main(["--results", str(res), "--out", str(tmp_path / "site")]) == 0
    page = (tmp_path / "site" / "index.html").read_text()
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; co" in page and "<b>bold" not in page
    assert (tmp_path / "site" / "figures" / "EnvA-v0_true_utility.png").is_file()
    env_a = page[page.index('<section id="EnvA-v0">') :].split("</section>")[0]
    assert 'src="figures/EnvA-v0_true_utility.png"' in env_a
    assert "http://" not in page and "https://" not in page  # nothing fetched at view time
    assert "comparisons" in page
    os.remove(res / "runs" / "x" / "comparisons_leaderboard.csv")
    assert 'id="comparisons"' not in site.write_site(res, tmp_path / "site2").read_text()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright  # the test extra; CI must have it

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


def _open(browser, index: Path):
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    problems = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("requestfailed", lambda r: problems.append(f"failed: {r.url}"))
    page.on("request", lambda r: r.url.startswith("file:") or problems.append(f"net: {r.url}"))
    page.goto(index.as_uri())
    page.wait_for_load_state("load")
    return page, problems


def _table(page, selector: str) -> tuple[list[str], list[list[tuple[str, str, str]]]]:
    """Column names, and per row per cell (data-v, shown value, shown CI)."""
    return page.eval_on_selector(
        selector,
        """t => [Array.from(t.tHead.rows[0].cells, h => h.dataset.c),
                 Array.from(t.tBodies[0].rows, r => Array.from(r.cells, c => [c.dataset.v,
                   c.firstChild ? c.firstChild.textContent.replace(/\\u200b/g, "") : "",
                   c.querySelector("small") ? c.querySelector("small").textContent : ""]))]""",
    )


def _close(shown: str, value: str) -> bool:
    return math.isclose(float(shown), float(value), rel_tol=1e-3, abs_tol=1e-12)


def _check_matches(page, selector: str, rows: list[dict[str, str]]) -> None:
    """Every cell of the table shows its CSV row's value (and CI bounds), rows in CSV order."""
    cols, cells = _table(page, selector)
    assert len(cells) == len(rows)
    for row, shown in zip(rows, cells, strict=True):
        for c, (raw, text, ci) in zip(cols, shown, strict=True):
            assert raw == row[c], (selector, c)
            try:
                float(raw)
            except ValueError:
                assert text == raw
                continue
            assert _close(text, raw), (selector, c, text, raw)
            if ci:
                lo, hi = re.fullmatch(r"\[(\S+), (\S+)\]", ci).groups()
                ends = (("_ci_low", "_ci_high"), ("_lo", "_hi"))
                pairs = [(s + lo, s + hi) for s in (c, c.split("_")[0]) for lo, hi in ends]
                lo_col, hi_col = next(p for p in pairs if p[0] in row and p[1] in row)
                assert _close(lo, row[lo_col]) and _close(hi, row[hi_col]), (selector, c)


def _check_sorts(page, selector: str, column: str) -> list[float]:
    cols, _ = _table(page, selector)
    header = f"{selector} th:nth-child({cols.index(column) + 1})"
    orders = []
    for direction in ("ascending", "descending"):
        page.click(header)
        assert page.get_attribute(header, "aria-sort") == direction
        values = [float(r[cols.index(column)][0]) for r in _table(page, selector)[1]]
        assert values == sorted(values, reverse=direction == "descending"), (column, values)
        orders.append(values)
    return orders[0]


@needs_chromium
def test_site_in_chromium(browser, tmp_path):
    res = _results(tmp_path)
    page, problems = _open(browser, site.write_site(res, tmp_path / "site"))
    assert page.eval_on_selector_all("img", "xs => xs.every(i => i.naturalWidth > 0)")
    assert page.locator("#nav a").count() == 4  # 2 envs, 1 board, comparisons; no other figures
    lb = _rows(res / "leaderboard.csv")
    _check_matches(page, "#EnvA-v0 table", [r for r in lb if r["env_id"] == "EnvA-v0"])
    _check_matches(page, "#EnvB-v0 table", [r for r in lb if r["env_id"] == "EnvB-v0"])
    _check_matches(page, "#board-EnvA-v0 table", _rows(res / "families" / "board_EnvA-v0.csv"))
    _check_matches(
        page, "#comparisons table", _rows(res / "runs" / "x" / "comparisons_leaderboard.csv")
    )
    # numerically, not as text ("-10" < "10.25" < "1e2" < "9.5" as strings)
    assert _check_sorts(page, "#EnvA-v0 table", "final_true_utility") == [-10, 9.5, 10.25, 100]
    _check_sorts(page, "#EnvA-v0 table", "labeler_calls")
    _check_sorts(page, "#comparisons table", "difference")
    assert page.inner_text("#EnvA-v0 tbody tr:first-child td:first-child") == "oracle"
    assert "<b>bold</b> & co" in page.inner_text("#EnvA-v0 tbody")
    page.screenshot(path=tmp_path / "small.png")
    assert not problems, problems


@needs_chromium
def test_real_results_site_in_chromium(browser, tmp_path):
    res = ROOT / "results"
    page, problems = _open(browser, site.write_site(res, tmp_path / "site"))
    assert page.eval_on_selector_all("img", "xs => xs.every(i => i.naturalWidth > 0)")
    lb = _rows(res / "leaderboard.csv")
    for env in dict.fromkeys(r["env_id"] for r in lb):
        _check_matches(page, f'[id="{env}"] table', [r for r in lb if r["env_id"] == env])
    for board in sorted((res / "families").glob("board_*.csv")):
        name = board.stem.removeprefix("board_")
        _check_matches(page, f'[id="board-{name}"] table', _rows(board))
    first = lb[0]["env_id"]
    _check_sorts(page, f'[id="{first}"] table', "final_true_utility")
    shot = tmp_path / "screenshot.png"
    page.screenshot(path=shot)
    if os.environ.get("SITE_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["SITE_SCREENSHOT"])
    assert shot.stat().st_size > 10_000
    assert not problems, problems
