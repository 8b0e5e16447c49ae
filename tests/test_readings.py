"""The committed results state their comparisons in generated blocks whose verdict words follow
the rule (baselines.stats.verdict) from the numbers printed beside them."""

import re
from pathlib import Path

import pytest

from baselines import stats

RESULTS = Path(__file__).resolve().parent.parent / "results"
NUMBER = r"([+-]?\d+\.\d+)"
CELL = re.compile(rf"{NUMBER} \[{NUMBER}, {NUMBER}\]")


def blocks(text: str) -> list[list[str]]:
    """The table rows of each generated comparison block in ``text``."""
    out, rows = [], None
    for line in text.splitlines():
        if line.strip() == stats.BLOCK_START:
            rows = []
        elif line.strip() == stats.BLOCK_END:
            out.append(rows)
            rows = None
        elif rows is not None and line.startswith("| ") and not line.startswith("| A |"):
            rows.append(line)
    assert rows is None, "a comparison block is not closed"
    return out


def check_row(line: str) -> str:
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert len(cells) == 6, line
    (d, d_lo, d_hi), (p, p_lo, p_hi) = (map(float, CELL.fullmatch(c).groups()) for c in cells[3:5])
    assert d_lo <= d <= d_hi and p_lo <= p <= p_hi and 0 <= p_lo <= p_hi <= 1, line
    assert cells[5] == stats.verdict(d_lo, d_hi, p_lo, p_hi), line
    return cells[5]


def test_the_rule_reads_both_intervals():
    assert stats.verdict(0.1, 2.0, 0.6, 0.9) == "better"
    assert stats.verdict(0.1, 2.0, 0.4, 0.9) == "no difference detected"  # P(A > B) straddles
    assert stats.verdict(-0.5, 2.0, 0.6, 0.9) == "no difference detected"
    assert stats.verdict(-2.0, -0.1, 0.0, 0.3) == "worse"


def test_block_rows_are_parsed_and_a_wrong_verdict_is_caught():
    text = "\n".join(stats.comparison_block([{"a": "x", "b": "y", **stats.compare(
        [5.0, 6.0, 7.0, 6.5], [1.0, 2.0, 1.5, 2.5])}], "U"))  # fmt: skip
    (rows,) = blocks(text)
    assert check_row(rows[0]) == "better"
    with pytest.raises(AssertionError):
        check_row(rows[0].replace("better", "no difference detected"))


def test_every_committed_block_follows_the_rule():
    pages = sorted(p for p in RESULTS.rglob("*.md") if "site" not in p.parts)
    found = {p.relative_to(RESULTS).as_posix(): blocks(p.read_text()) for p in pages}
    assert found["LEADERBOARD.md"], "the leaderboard has no generated comparison block"
    for page, bs in found.items():
        for rows in bs:
            assert rows, f"{page}: an empty comparison block"
            for line in rows:
                check_row(line)
