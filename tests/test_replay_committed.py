"""The committed leaderboard is reproducible: sample run folders of it (``results/replay``) are
replayed by today's code byte for byte, and they are the leaderboard's own rows."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from baselines import results
from baselines.run import main

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = sorted((ROOT / "results" / "replay").glob("*/*/seed_*"))
FAST = [s for s in SAMPLES if "Neural" not in s.parts[-3] and "+" not in s.parts[-2]]  # ~0.3 s each


def test_there_are_samples():
    assert len(SAMPLES) >= 3 and FAST


def _replay(sample: Path, tmp_path: Path) -> None:
    assert results.verify(sample) == ""
    cfg = sample / "config.json"
    code = main(["--from", str(cfg), "--any-code", "--out", str(tmp_path), "--no-progress"])
    assert code == 0
    s = json.loads((sample / "summary.json").read_text())
    mine = results.run_dir(tmp_path, s["env_id"], s["run_name"], s["seed"]) / "metrics.csv"
    assert mine.read_bytes() == (sample / "metrics.csv").read_bytes()


@pytest.mark.parametrize("sample", FAST, ids=lambda p: "/".join(p.parts[-3:]))
def test_committed_leaderboard_run_replays_byte_for_byte(sample, tmp_path):
    _replay(sample, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: "/".join(p.parts[-3:]))
def test_every_committed_sample_replays_byte_for_byte(sample, tmp_path):
    _replay(sample, tmp_path)


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: "/".join(p.parts[-3:]))
def test_samples_are_the_leaderboards_rows(sample):
    s = json.loads((sample / "summary.json").read_text())
    board = pd.read_csv(ROOT / "results" / "runs.csv")
    row = board[
        (board.env_id == s["env_id"])
        & (board.run_name == s["run_name"])
        & (board.seed == s["seed"])
    ]
    assert len(row) == 1
    row = row.iloc[0]
    assert row.config_hash == s["config_hash"]  # the same settings
    for key in ("final_true_utility", "auc_true_utility", "collapse_drop", "final_gap"):
        assert s[key] == pytest.approx(row[key], rel=1e-5, abs=1e-6), key  # runs.csv: 6 digits
