"""``python -m baselines.plot``: curves of run folders, damaged folders skipped, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from baselines import plot, results, stats

ENV = "RLHFBlindSpot-v0"


def _write_run(out: Path, agent: str, seed: int, u: np.ndarray, sampled: bool = False) -> Path:
    folder = results.run_dir(out, ENV, agent, seed)
    prefix = "sample_" if sampled else ""
    n = np.arange(1, len(u) + 1)[:, None]
    history = {f"{prefix}true_utility": u[:, None], f"{prefix}proxy_reward": (u + 1)[:, None],
               f"{prefix}gap": 0 * n + 1.0, "rm_error": 0 * n + 1.0, "labels_used": n,
               "oracle_queries": 0 * n}  # fmt: skip
    results.atomic_write_text(folder / "metrics.csv", results.metrics_csv(history, 0))
    names = {"env_id": ENV, "run_name": agent, "seed": seed}  # a record as the harness writes it
    summary = {"status": "ok", **names, "agent": agent.split("+")[0], "rounds": len(u),
               **results.summarise(history, 0)}  # fmt: skip
    results.atomic_write_json(folder / "summary.json", summary)
    results.atomic_write_json(
        folder / "config.json", {**names, "git_commit": "c", "code_hash": "h"}
    )
    names = ["config.json", "metrics.csv", "summary.json"]
    results.write_manifest(folder, names)  # sealed, as the harness does
    return folder


@pytest.fixture
def runs(tmp_path):
    out = tmp_path / "runs"
    rng = np.random.default_rng(0)
    for seed in range(3):
        _write_run(out, "naive", seed, np.linspace(0, 5, 20) + rng.normal(0, 0.1, 20))
        _write_run(out, "fpo", seed, np.linspace(0, 8, 20) + rng.normal(0, 0.1, 20))
    return out


def test_plot_writes_png_and_svg_per_env(runs, tmp_path, capsys):
    assert plot.main([str(runs), "--out", str(tmp_path / "plots")]) == 0
    png, svg = tmp_path / "plots" / f"{ENV}.png", tmp_path / "plots" / f"{ENV}.svg"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    text = svg.read_text()
    for words in ("true utility U", "proxy reward r", "RM round", "naive (n=3)", "fpo (n=3)"):
        assert words in text
    assert "95 % CI" in text
    assert capsys.readouterr().err == ""


def test_curves_are_the_seed_means(runs, tmp_path, monkeypatch):
    seen = {}
    real = stats.t_ci

    def spy(x, level=0.95):
        seen.setdefault(len(seen), x.copy())
        return real(x, level)

    monkeypatch.setattr(stats, "t_ci", spy)
    plot.main([str(runs / ENV / "naive"), "--metric", "true_utility", "--out", str(tmp_path)])
    want = np.stack(
        [results.read_metrics(runs / ENV / "naive" / f"seed_{s}" / "metrics.csv")["true_utility"]
         for s in range(3)]
    )  # fmt: skip
    assert np.array_equal(seen[0], want)


def test_smoothing_is_a_trailing_mean():
    x = np.array([[1.0, 3.0, 5.0, 7.0]])
    assert plot._smooth(x, 2)[0] == pytest.approx([1.0, 2.0, 4.0, 6.0])
    assert plot._smooth(x, 1) is x


def test_sb3_runs_plot_their_sampled_columns(tmp_path):
    out = tmp_path / "runs"
    for seed in range(2):
        _write_run(out, "naive+ppo", seed, np.linspace(0, 3, 10), sampled=True)
    assert plot.main([str(out), "--out", str(tmp_path / "p")]) == 0
    assert "sampled responses" in (tmp_path / "p" / f"{ENV}.svg").read_text()


def test_damaged_folders_are_skipped_with_one_line_each(runs, tmp_path, capsys):
    bad = {
        "unfinished": lambda f: (f / "summary.json").unlink(),
        "garbled": lambda f: (f / "summary.json").write_text("{not json"),
        "failed": lambda f: (f / "summary.json").write_text(json.dumps({"status": "failed"})),
        "truncated": lambda f: (f / "metrics.csv").write_text("round,true_utility\n1,"),
        "no_metrics": lambda f: (f / "metrics.csv").unlink(),
        "nan": lambda f: (f / "metrics.csv").write_text(
            "round,true_utility,proxy_reward\n1,nan,1.0\n"
        ),
    }
    for i, (name, damage) in enumerate(bad.items()):
        damage(_write_run(runs, name, i, np.ones(5)))
    assert plot.main([str(runs), "--out", str(tmp_path / "p")]) == 0
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == len(bad) - 1  # the unfinished one is not a run folder at all
    assert all(line.startswith("skipping ") for line in lines)
    for name in ("garbled", "failed", "truncated", "no_metrics", "nan"):
        assert sum(f"/{name}/" in line for line in lines) == 1
    svg = (tmp_path / "p" / f"{ENV}.svg").read_text()
    assert "naive (n=3)" in svg and "garbled" not in svg


@pytest.mark.parametrize(
    "argv, word",
    [
        ([], "RUNS"),
        (["/no/such/folder"], "RUNS"),
        (["{runs}", "--metric", "nope"], "--metric"),
        (["{runs}", "--metric", "gap", "gap"], "--metric"),
        (["{runs}", "--smooth", "0"], "--smooth"),
        (["{runs}", "--env", "RLHFVerbosity-v0"], "--env"),
        (["{runs}", "--agents", "kl"], "--agents"),
        (["{empty}"], "RUNS"),
    ],
)
def test_bad_arguments_are_one_line_errors(runs, tmp_path, capsys, argv, word):
    (tmp_path / "empty").mkdir()
    argv = [a.format(runs=runs, empty=tmp_path / "empty") for a in argv]
    assert plot.main([*argv, "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and word in err
    assert not (tmp_path / "p").exists()
