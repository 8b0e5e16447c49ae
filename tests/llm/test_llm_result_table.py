"""``llm_track.run`` ends with its result table, read from the run's summary."""

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from llm_track.run import main  # noqa: E402


def test_run_ends_with_its_result(tmp_path, capsys):
    argv = ["--agent", "naive", "--preset", "tiny", "--steps", "2", "--out", str(tmp_path)]
    assert main([*argv, "--no-progress"]) == 0
    out = capsys.readouterr().out
    s = json.loads((tmp_path / "naive" / "seed_0" / "summary.json").read_text())
    row = next(line for line in out.splitlines() if line.startswith("oracle utility"))
    assert f"{s['utility_winner_first']:.3f}" in row and f"{s['utility_winner_last']:.3f}" in row
    assert f"oracle queries {s['oracle_queries']}" in out
    assert f"python -m llm_track.evaluate --runs {tmp_path}" in out
    assert main([*argv, "--no-progress", "--quiet", "--force"]) == 0
    assert "oracle utility of the winner" not in capsys.readouterr().out
