"""What a run command ends with (the result table), replay from a config.json, and logging."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from baselines import report, results
from baselines.run import main
from baselines.stats import bootstrap_ci

LINEAR = "RLHFBlindSpot-v0"


def test_the_result_table_matches_the_run_folders(tmp_path, capsys):
    args = ["--agent", "naive", "--seeds", "0-3", "--rounds", "60", "--out", str(tmp_path)]
    assert main([*args, "--no-progress"]) == 0
    out = capsys.readouterr().out
    summaries = [
        json.loads((results.run_dir(tmp_path, LINEAR, "naive", s) / "summary.json").read_text())
        for s in range(4)
    ]
    u = np.array([s["final_true_utility"] for s in summaries])
    lo, hi = bootstrap_ci(u)
    line = next(row for row in out.splitlines() if row.startswith(LINEAR))
    assert f"{u.mean():.3f} [{lo:.3f}, {hi:.3f}]" in line
    assert f"{np.mean([s['collapse_drop'] for s in summaries]):.3f}" in line
    assert f"{np.mean([s['final_gap'] for s in summaries]):.3f}" in line
    assert " 60 " in line  # labels: one per round on the linear env
    assert f"python -m baselines.leaderboard --runs {tmp_path}" in out
    # a second call finds them finished and still prints their table; --quiet does not
    assert main([*args, "--no-progress"]) == 0
    assert f"{u.mean():.3f} [{lo:.3f}, {hi:.3f}]" in capsys.readouterr().out
    assert main([*args, "--no-progress", "--quiet"]) == 0
    assert "final U" not in capsys.readouterr().out


def test_the_table_skips_damaged_folders(tmp_path):
    assert main(["--agent", "naive", "--seeds", "0-1", "--rounds", "20", "--out", str(tmp_path),
                 "--no-progress", "--quiet"]) == 0  # fmt: skip
    folders = [results.run_dir(tmp_path, LINEAR, "naive", s) for s in (0, 1)]
    (folders[0] / "summary.json").write_text("{}")
    (row,) = report.rows(folders)
    assert row[:3] == [LINEAR, "naive", "1"]


def test_replay_reproduces_a_run_byte_for_byte(tmp_path, capsys):
    src = tmp_path / "src"
    assert main(["--agent", "fpo-relaxed", "--seeds", "0-2", "--rounds", "50", "--out", str(src),
                 "--no-progress", "--quiet"]) == 0  # fmt: skip
    cfg = results.run_dir(src, LINEAR, "fpo-relaxed", 1) / "config.json"
    dst = tmp_path / "dst"
    assert main(["--from", str(cfg), "--out", str(dst), "--no-progress"]) == 0
    assert "reproduces" in capsys.readouterr().out
    mine = results.run_dir(dst, LINEAR, "fpo-relaxed", 1) / "metrics.csv"
    assert mine.read_bytes() == (cfg.parent / "metrics.csv").read_bytes()


def test_replay_refuses_other_code_and_changed_settings(tmp_path, capsys):
    src = tmp_path / "src"
    assert main(["--agent", "naive", "--seeds", "0", "--rounds", "10", "--out", str(src),
                 "--no-progress", "--quiet"]) == 0  # fmt: skip
    cfg_path = results.run_dir(src, LINEAR, "naive", 0) / "config.json"
    assert main(["--from", str(cfg_path), "--agent-kwargs", "policy_lr=1"]) == 2
    assert "drop --agent-kwargs" in capsys.readouterr().err
    cfg = json.loads(cfg_path.read_text())
    cfg["code_hash"] = "0" * 16
    cfg_path.write_text(json.dumps(cfg))
    results.write_manifest(cfg_path.parent, ["config.json", "metrics.csv", "summary.json"])
    assert main(["--from", str(cfg_path), "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "was made by code 0000000000000000" in err[0]
    # --any-code replays it anyway and says whether this code reproduces it
    assert main(["--from", str(cfg_path), "--out", str(tmp_path / "d"), "--any-code",
                 "--no-progress"]) == 0  # fmt: skip
    captured = capsys.readouterr()
    assert "checking whether this code reproduces it" in captured.err
    assert "reproduces" in captured.out


def _scalars(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_events_for_whitebox_and_sb3_runs(tmp_path):
    pytest.importorskip("tensorboard")
    tb = tmp_path / "tb"
    assert main(["--agent", "naive", "--seeds", "0", "--rounds", "15", "--out", str(tmp_path),
                 "--no-progress", "--quiet", "--tensorboard", str(tb)]) == 0  # fmt: skip
    got = _scalars(tb / LINEAR / "naive" / "seed_0")
    metrics = results.read_metrics(results.run_dir(tmp_path, LINEAR, "naive", 0) / "metrics.csv")
    np.testing.assert_allclose(got["true_utility"], metrics["true_utility"], rtol=1e-6)
    env = "RLHFVerbosity-v0"
    assert main(["--agent", "naive", "--env", env, "--policy-optimizer", "ppo", "--seeds", "0",
                 "--rounds", "4", "--out", str(tmp_path), "--no-progress", "--quiet",
                 "--sb3-kwargs", "n_steps=16", "batch_size=16",
                 "--tensorboard", str(tb)]) == 0  # fmt: skip
    ours = _scalars(tb / env / "naive+ppo" / "seed_0")
    assert len(ours["sample_true_utility"]) == 4
    (sb3_dir,) = (tb / env / "naive+ppo").glob("seed_0_sb3*")
    assert any(k.startswith(("rollout/", "train/", "time/")) for k in _scalars(sb3_dir))


def test_missing_logging_backend_is_an_error_before_compute(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import raises ImportError
    assert main(["--agent", "naive", "--seeds", "0", "--rounds", "5", "--out",
                 str(tmp_path / "o"), "--wandb", "proj"]) == 2  # fmt: skip
    assert "--wandb needs the wandb package" in capsys.readouterr().err
    assert not (tmp_path / "o" / LINEAR).exists()
