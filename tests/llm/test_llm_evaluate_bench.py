"""Evaluation (held-out prompts, pairwise sign test) on tiny models."""

import json
import os

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from llm_track import evaluate  # noqa: E402
from llm_track.config import preset_config  # noqa: E402
from llm_track.run import run_protocol  # noqa: E402

torch.set_num_threads(1)


def test_pairwise_sign_test_by_hand():
    def run(*utilities):
        return {"per_prompt": [{"prompt": "q", "answer": "", "utility": u} for u in utilities]}

    # seed 0: 1 > 0, 2 > 0, 3 = 3; seed 1: 5 > 4 -> 3 wins, 0 losses, 1 tie: p = 2 / 2^3
    results = {"a": {0: run(1.0, 2.0, 3.0), 1: run(5.0)}, "b": {0: run(0.0, 0.0, 3.0), 1: run(4.0)}}
    (row,) = evaluate.pairwise(results)
    assert (row["wins"], row["losses"], row["ties"]) == (3, 0, 1)
    assert row["win_rate"] == 1.0 and row["p"] == pytest.approx(0.25)


def test_mean_and_t_ci_column():
    assert evaluate._ms([]) == "-"
    assert evaluate._ms([2.0]) == "2.000"  # one seed: no interval
    # two seeds 0 and 1: 0.5 +- t(0.975, 1) * sd / sqrt(2) = 0.5 +- 12.706 * 0.7071 / 1.4142
    assert evaluate._ms([0.0, 1.0]) == "0.500 [-5.853, 6.853]"


def test_llm_files_keep_their_format(tmp_path):
    """metrics.csv (csv-module line ends), JSON with default=str, through baselines.results."""
    from baselines.results import atomic_write_json, read_csv, read_json, write_csv

    rows = [
        {"step": 0, "utility_winner": 0.5, "agent": "fpo"},
        {"step": 1, "utility_winner": -1.25, "agent": "fpo"},
    ]
    write_csv(tmp_path / "metrics.csv", rows)
    assert (tmp_path / "metrics.csv").read_bytes() == (
        b"step,utility_winner,agent\r\n0,0.5,fpo\r\n1,-1.25,fpo\r\n"
    )
    assert read_csv(tmp_path / "metrics.csv") == rows
    write_csv(tmp_path / "empty.csv", [])
    assert (tmp_path / "empty.csv").read_bytes() == b""
    atomic_write_json(str(tmp_path / "a.json"), {"b": (1, 2), "a": torch.float32}, default=str)
    assert (tmp_path / "a.json").read_text() == (
        '{\n  "a": "torch.float32",\n  "b": [\n    1,\n    2\n  ]\n}\n'
    )
    assert read_json(tmp_path / "a.json")["b"] == [1, 2]
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(tmp_path / "a.json").st_mode & 0o777 == 0o666 & ~umask
    assert not list(tmp_path.glob(".*.tmp"))


def test_evaluate_writes_eval_and_markdown(tmp_path):
    for agent in ("naive", "fpo-relaxed"):
        cfg = preset_config("tiny", agent=agent, steps=3, candidates=4)
        run_protocol(cfg, str(tmp_path / "runs"), progress=False)
    out = tmp_path / "LLM_TRACK.md"
    assert (
        evaluate.main(
            [
                "--runs",
                str(tmp_path / "runs"),
                "--out",
                str(out),
                "--prompts",
                "3",
                "--max-new-tokens",
                "8",
                "--few-seeds",
            ]
        )
        == 0
    )
    for agent in ("naive", "fpo-relaxed"):
        with open(tmp_path / "runs" / agent / "seed_0" / "eval.json") as f:
            ev = json.load(f)
        assert len(ev["per_prompt"]) == 3
        for row in ev["per_prompt"]:
            assert -15.0 <= row["utility"] <= 5.0
            assert -15.0 <= row["gold"] <= 5.0 and row["gold"] != row["utility"]
            assert 1 <= row["tokens"] <= 8
            sig = lambda x: 1 / (1 + 2.718281828459045 ** (-x))  # noqa: E731
            want = sig(row["proxy"] - row["proxy_ref"]) - sig(row["utility"] - row["utility_ref"])
            assert row["overconfidence"] == pytest.approx(want, abs=1e-6)
    text = out.read_text()
    assert "## LLM track" in text and "fpo-relaxed vs naive" in text
    assert (
        "eval utility" in text and "Across seeds, by eval utility" in text and "Within-run" in text
    )
    assert "Not compared (fewer than 3 shared seeds): fpo-relaxed vs naive." in text
    assert "<!-- comparisons" not in text  # one seed: no comparison block
    assert "3-" in text or "-3" in text or "-0-" in text  # 3 comparisons were made


def test_evaluate_bad_folder_is_one_line(tmp_path, capsys):
    assert evaluate.main(["--runs", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--runs" in err
