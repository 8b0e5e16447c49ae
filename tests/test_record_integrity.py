"""A run's record checks itself: forged folders (a summary edited, metrics edited with the
summary and manifest made to agree, ``inf`` in the metrics, a ``run_name`` naming another folder)
are refused or flagged by the leaderboard, ``--verify`` and ``--from``, on real run folders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from baselines import leaderboard, results
from baselines.run import main as run

ENV = "RLHFBlindSpot-v0"
FILES = ["config.json", "metrics.csv", "summary.json"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("honest")
    args = ["--agent", "naive", "--seeds", "0-1", "--rounds", "20", "--out", str(out)]
    assert run([*args, "--no-progress", "--quiet"]) == 0
    return out


def _edit_json(folder: Path, name: str, **changes) -> None:
    data = json.loads((folder / name).read_text())
    results.atomic_write_json(folder / name, {**data, **changes})


def _edit_metric(folder: Path, column: str, row: int, value: str) -> None:
    lines = (folder / "metrics.csv").read_text().splitlines(keepends=True)
    cells = lines[row].rstrip("\n").split(",")
    cells[lines[0].split(",").index(column)] = value
    lines[row] = ",".join(cells) + "\n"
    (folder / "metrics.csv").write_text("".join(lines))


def _summary_from_metrics(folder: Path) -> None:
    """What a careful forger does after editing metrics.csv: make the summary agree with it."""
    m = results.read_metrics(folder / "metrics.csv")
    _edit_json(
        folder, "summary.json", **results.summarise({k: v[:, None] for k, v in m.items()}, 0)
    )


FORGERIES = {
    "summary edited": lambda f: _edit_json(f, "summary.json", final_true_utility=8.0),
    "metrics edited alone": lambda f: _edit_metric(f, "true_utility", 20, "8.0"),
    "inf in metrics": lambda f: _edit_metric(f, "rm_error", 5, "inf"),
    "nan in metrics": lambda f: _edit_metric(f, "true_utility", 20, "nan"),
    "run_name elsewhere": lambda f: [
        _edit_json(f, name, run_name="fpo") for name in ("config.json", "summary.json")
    ],
}
#: what the one line naming the refused folder says
WHY = {
    "summary edited": "final_true_utility (8.0) is not what metrics.csv gives",
    "metrics edited alone": "is not what metrics.csv gives",
    "inf in metrics": "non-finite values in rm_error",
    "nan in metrics": "non-finite values in true_utility",
    "run_name elsewhere": "names 'RLHFBlindSpot-v0/fpo/seed_1', not its own folder",
}


def _forged(runs: Path, tmp_path: Path, forge) -> Path:
    copy = tmp_path / "runs"
    shutil.copytree(runs, copy)
    folder = results.run_dir(copy, ENV, "naive", 1)
    forge(folder)
    results.write_manifest(folder, FILES)  # resealed: the manifest alone cannot tell
    return folder


def _board(copy: Path, out: Path, *flags: str) -> pd.Series:
    assert leaderboard.main(["--runs", str(copy), "--results", str(out), *flags]) == 0
    return pd.read_csv(out / "leaderboard.csv").set_index("agent").loc["naive"]


def test_honest_runs_load_and_verify(runs, tmp_path, capsys):
    assert len(results.load_runs([runs])) == 2
    row = _board(runs, tmp_path / "res", "--verify", "2")
    assert row.seeds == 2 and row.verified == "yes (2 replayed)"
    assert "| verified (replayed) |" in (tmp_path / "res" / "LEADERBOARD.md").read_text()
    assert "skipping" not in capsys.readouterr().err


@pytest.mark.parametrize("name", FORGERIES)
def test_forged_records_are_refused_by_every_reader_and_by_from(runs, tmp_path, capsys, name):
    folder = _forged(runs, tmp_path, FORGERIES[name])
    capsys.readouterr()
    row = _board(tmp_path / "runs", tmp_path / "res", "--verify", "1")
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"skipping {folder}: ") and WHY[name] in line
    assert row.seeds == 1 and row.verified == "yes (1 replayed)"  # the honest seed only
    code = run(["--from", str(folder / "config.json"), "--out", str(tmp_path / "re")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and f"{folder} is refused: " in err[0], err


def test_metrics_and_summary_forged_together_are_caught_by_replay(runs, tmp_path, capsys):
    folder = _forged(runs, tmp_path, lambda f: (
        _edit_metric(f, "true_utility", 20, "8.0"), _summary_from_metrics(f)
    ))  # fmt: skip
    loaded = results.load_runs([tmp_path / "runs"])
    assert len(loaded) == 2 and 8.0 in set(loaded.final_true_utility)  # it reads as sound
    row = _board(tmp_path / "runs", tmp_path / "res", "--verify", "2")
    assert row.verified == "NO (1 of 2 not reproduced)"
    assert "| NO (1 of 2 not reproduced) |" in (tmp_path / "res" / "LEADERBOARD.md").read_text()
    capsys.readouterr()
    assert run(["--from", str(folder / "config.json"), "--out", str(tmp_path / "re")]) == 1
    assert "DIFFERS FROM" in capsys.readouterr().out
    # a forged copy planted where the replay goes is replaced by the replay, not compared
    planted = results.run_dir(tmp_path / "planted", ENV, "naive", 1)
    shutil.copytree(folder, planted)
    assert run(["--from", str(folder / "config.json"), "--out", str(tmp_path / "planted")]) == 1
    assert "8.0" not in (planted / "metrics.csv").read_text().splitlines()[20].split(",")[1]


def test_from_refuses_to_replay_a_folder_into_itself(runs, tmp_path, capsys):
    folder = _forged(runs, tmp_path, lambda f: None)
    before = (folder / "metrics.csv").read_bytes()
    assert run(["--from", str(folder / "config.json"), "--out", str(tmp_path / "runs")]) == 2
    assert "into itself" in capsys.readouterr().err
    assert (folder / "metrics.csv").read_bytes() == before
    other = folder.parent / "config.json"  # a config.json outside its run folder
    shutil.copy(folder / "config.json", other)
    assert run(["--from", str(other), "--out", str(tmp_path / "re")]) == 2
    assert "is refused" in capsys.readouterr().err


def test_the_committed_sample_runs_pass_the_checks():
    samples = Path(__file__).resolve().parent.parent / "results" / "replay"
    assert len(results.load_runs([samples])) == len(list(samples.glob("*/*/seed_*")))
