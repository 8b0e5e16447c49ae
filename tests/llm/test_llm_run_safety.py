"""LLM run folders are as safe as the gym's: locked, sealed, checked writable before any work;
evaluate skips unfinished or damaged runs with one line and writes into results/ only with
--force."""

import json
import os
import shutil

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from baselines.results import RunLock  # noqa: E402
from llm_track import evaluate  # noqa: E402
from llm_track.config import LLMTrackError, preset_config  # noqa: E402
from llm_track.run import main, run_protocol  # noqa: E402

torch.set_num_threads(1)
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 3-step tiny naive run: its folder."""
    out = tmp_path_factory.mktemp("runs")
    cfg = preset_config("tiny", agent="naive", steps=3, candidates=2)
    return run_protocol(cfg, str(out), progress=False)


def _damaged(root, seed: int, src: str, damage) -> str:
    """A copy of the run ``src`` as ``root/naive/seed_<seed>``, then ``damage(folder)``."""
    folder = os.path.join(root, "naive", f"seed_{seed}")
    shutil.copytree(src, folder)
    damage(folder)
    return folder


def _write(name: str, data: bytes):
    def damage(folder):
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)

    return damage


def _unfinished(folder):  # killed after 2 of 3 steps: no summary, no seal
    for name in ("summary.json", "manifest.json"):
        os.remove(os.path.join(folder, name))


def _truncated(folder):
    path = os.path.join(folder, "metrics.csv")
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])


DAMAGES = {
    "unfinished": _unfinished,
    "truncated metrics.csv": _truncated,
    "corrupt checkpoint meta": _write("checkpoint/meta.json", b"{not json"),
    "100-byte adapter": _write("checkpoint/adapter/adapter_model.safetensors", b"x" * 100),
    "corrupt summary.json": _write("summary.json", b'{"steps_done": '),
}


def test_evaluate_skips_unfinished_and_damaged_runs_with_one_line(finished, tmp_path, capsys):
    root = str(tmp_path / "runs")
    good = _damaged(root, 0, finished, lambda folder: None)
    bad = [_damaged(root, s, finished, d) for s, d in enumerate(DAMAGES.values(), 1)]
    res = evaluate.evaluate([root], str(tmp_path / "LLM.md"), 2, 4, few_seeds=True)
    assert res["meta"]["n_runs"] == 1 and list(res["results"]["naive"]) == [0]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == len(bad), err
    for folder, line in zip(bad, err, strict=True):
        assert line.startswith(f"skipping {folder}: "), line
    assert os.path.exists(os.path.join(good, "eval.json"))
    assert not any(os.path.exists(os.path.join(b, "eval.json")) for b in bad)


def test_evaluate_writes_into_results_only_with_force(finished, tmp_path, capsys, refuse):
    committed = os.path.join(REPO, "results", "LLM_TRACK.md")
    before = open(committed, "rb").read()
    refuse("llm_track.evaluate.Evaluator")
    runs = os.path.dirname(os.path.dirname(finished))
    assert evaluate.main(["--runs", runs, "--out", committed]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--force" in err and "results" in err
    assert open(committed, "rb").read() == before
    # unwritable --out (under a file): one line before any work
    (tmp_path / "file").write_text("")
    assert evaluate.main(["--runs", runs, "--out", str(tmp_path / "file" / "x.md")]) == 2
    assert "--out" in capsys.readouterr().err


def test_fewer_than_three_seeds_refused_before_any_work(finished, tmp_path, capsys, refuse):
    root = str(tmp_path / "runs")
    _damaged(root, 0, finished, lambda folder: None)
    run_protocol(preset_config("tiny", agent="fpo", steps=3, candidates=2), root, progress=False)
    refuse("llm_track.evaluate.Evaluator")
    assert evaluate.main(["--runs", root, "--out", str(tmp_path / "x.md")]) == 2
    err = capsys.readouterr().err
    assert "share 1 seeds" in err and "--few-seeds" in err


def test_second_run_into_a_locked_folder_is_refused(tmp_path, refuse):
    out = tmp_path / "out"
    lock = RunLock(out / "naive" / "seed_0")
    assert lock.acquire()
    refuse("llm_track.models.load_models")
    try:
        cfg = preset_config("tiny", agent="naive", steps=2, candidates=2)
        with pytest.raises(LLMTrackError, match="being written by another"):
            run_protocol(cfg, str(out), progress=False)
    finally:
        lock.release()


def test_unwritable_out_is_one_line_before_any_work(tmp_path, one_line_error, refuse):
    (tmp_path / "file").write_text("")
    refuse("llm_track.models.load_models")
    argv = ["--agent", "naive", "--preset", "tiny", "--out", str(tmp_path / "file" / "out")]
    assert main([*argv, "--no-progress"]) == 2
    one_line_error("llm_track.run", "--out")


def test_a_finished_run_is_sealed_and_a_resume_unseals_it(finished):
    from baselines.results import run_state, verify

    assert verify(finished) == ""
    with open(os.path.join(finished, "summary.json")) as f:
        summary = json.load(f)
    assert summary["status"] == "ok" and "checkpoint/meta.json" in summary["checkpoint"]
    with open(os.path.join(finished, "config.json")) as f:
        from baselines.results import config_hash

        assert run_state(finished, config_hash(json.load(f)["config"]))[0] == "done"
