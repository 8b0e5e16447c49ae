"""Evaluation (held-out prompts, pairwise binomial test) and the benchmark CLI on tiny models."""

import json
import os

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from llm_track import bench, evaluate  # noqa: E402
from llm_track.config import preset_config  # noqa: E402
from llm_track.run import run_protocol  # noqa: E402

torch.set_num_threads(1)


def test_binomial_two_sided():
    assert evaluate.binomial_two_sided(0, 0) == 1.0
    assert evaluate.binomial_two_sided(5, 5) == pytest.approx(1.0)
    assert evaluate.binomial_two_sided(10, 0) == pytest.approx(2 / 1024)
    assert evaluate.binomial_two_sided(0, 10) == pytest.approx(2 / 1024)
    assert evaluate.binomial_two_sided(7, 3) == pytest.approx(0.34375)
    stats = pytest.importorskip("scipy.stats")
    for w, l_ in [(188, 144), (140, 135), (167, 138), (12, 3)]:
        want = stats.binomtest(w, w + l_, 0.5).pvalue
        assert evaluate.binomial_two_sided(w, l_) == pytest.approx(want, rel=1e-6)


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
            assert 1 <= row["tokens"] <= 8
            sig = lambda x: 1 / (1 + 2.718281828459045 ** (-x))  # noqa: E731
            want = sig(row["proxy"] - row["proxy_ref"]) - sig(row["utility"] - row["utility_ref"])
            assert row["overconfidence"] == pytest.approx(want, abs=1e-6)
    text = out.read_text()
    assert "## LLM track" in text and "fpo-relaxed vs naive" in text
    assert "3-" in text or "-3" in text or "-0-" in text  # 3 comparisons were made


def test_evaluate_bad_folder_is_one_line(tmp_path, capsys):
    assert evaluate.main(["--runs", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--runs" in err


def test_bench_tiny(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert (
        bench.main(
            [
                "--shapes",
                "tiny",
                "--steps",
                "1",
                "--candidates",
                "3",
                "--max-new-tokens",
                "6",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    res = json.loads(out.read_text())
    for mode in ("batched", "two-loop-gen", "per-candidate"):
        assert set(res[mode]) == {"gen_s", "score_s", "update_s", "step_s"}
        assert all(v > 0 for v in res[mode].values())
    assert res["generation_mode"] == "one-loop/row-mask"
    assert res["generation_speedup"] > 0
    out_text = capsys.readouterr().out
    assert "per-candidate" in out_text and "two-loop-gen" in out_text
    assert "generation speed-up" in out_text
    assert os.path.exists(out)
