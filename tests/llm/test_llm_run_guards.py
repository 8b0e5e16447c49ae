"""llm_track.run refuses to overwrite or mis-resume a run, and bad numbers are one-line errors."""

import json
import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from baselines.results import read_csv, write_csv  # noqa: E402
from llm_track.run import main  # noqa: E402

torch.set_num_threads(1)
PROG = "llm_track.run"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
AGENT = "naive"


def _args(out, *extra):
    return [
        "--agent",
        AGENT,
        "--preset",
        "tiny",
        "--candidates",
        "2",
        "--out",
        str(out),
        "--no-progress",
        *extra,
    ]


def _folder(out):
    return os.path.join(str(out), AGENT, "seed_0")


def _step(folder):
    path = os.path.join(folder, "checkpoint", "state.pt")
    return torch.load(path, weights_only=False)["step"]


def test_rerun_refused_unless_force(tmp_path, capsys, one_line_error, interrupted_at):
    out = tmp_path / "out"
    assert main(_args(out, "--steps", "4", "--checkpoint-every", "2")) == 0
    folder = _folder(out)
    before = open(os.path.join(folder, "metrics.csv"), "rb").read()
    capsys.readouterr()

    # Plain rerun: refused, one line, nothing touched.
    assert main(_args(out, "--steps", "4")) == 2
    one_line_error(PROG, folder, "--resume", "--force")
    assert open(os.path.join(folder, "metrics.csv"), "rb").read() == before
    assert _step(folder) == 4

    # The same through the CLI: exit status 2, one line, no traceback.
    proc = subprocess.run(
        [sys.executable, "-m", "llm_track.run", *_args(out, "--steps", "4")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert "--force" in proc.stderr

    # --resume and --force together: a one-line error.
    assert main(_args(out, "--resume", "--force")) == 2
    one_line_error(PROG, "--resume", "--force")

    # --force restart killed at step 1: the old checkpoint and rows are gone, not mixed in.
    with interrupted_at(1):
        assert main(_args(out, "--steps", "4", "--checkpoint-every", "10", "--force")) == 130
    assert not os.path.exists(os.path.join(folder, "checkpoint"))
    assert not os.path.exists(os.path.join(folder, "summary.json"))
    assert [r["step"] for r in read_csv(os.path.join(folder, "metrics.csv"))] == [0]

    # A later --resume starts over cleanly: steps 0..3 of the new run only.
    assert main(_args(out, "--steps", "4", "--checkpoint-every", "10", "--resume")) == 0
    assert [r["step"] for r in read_csv(os.path.join(folder, "metrics.csv"))] == [0, 1, 2, 3]
    assert _step(folder) == 4


def test_resume_refuses_mismatched_checkpoint(tmp_path, capsys, one_line_error):
    out = tmp_path / "out"
    assert main(_args(out, "--steps", "4", "--checkpoint-every", "4")) == 0
    folder = _folder(out)
    metrics = os.path.join(folder, "metrics.csv")
    rows = read_csv(metrics)
    capsys.readouterr()

    # metrics.csv from a newer restart (fewer rows than the checkpoint's step): refused.
    write_csv(metrics, rows[:2])
    assert main(_args(out, "--steps", "6", "--resume")) == 2
    one_line_error(PROG, "--resume", "metrics.csv", "step 4")
    assert len(read_csv(metrics)) == 2  # nothing appended

    # As many rows, but other numbers (another start of the run): refused.
    other = [dict(r, proxy_winner=r["proxy_winner"] + 1.0) for r in rows]
    write_csv(metrics, other)
    assert main(_args(out, "--steps", "6", "--resume")) == 2
    one_line_error(PROG, "--resume", "metrics.csv")

    # A checkpoint without meta.json (not one a run wrote): refused.
    write_csv(metrics, rows)
    os.remove(os.path.join(folder, "checkpoint", "meta.json"))
    assert main(_args(out, "--steps", "6", "--resume")) == 2
    one_line_error(PROG, "--resume", "meta.json")


def test_resume_refuses_other_settings(tmp_path, capsys, one_line_error):
    out = tmp_path / "out"
    assert main(_args(out, "--steps", "3", "--checkpoint-every", "3")) == 0
    folder = _folder(out)
    capsys.readouterr()

    # Settings differ from config.json.
    assert main(_args(out, "--steps", "5", "--gamma", "2", "--resume")) == 2
    one_line_error(PROG, "--resume", "gamma")

    # config.json rewritten (by a killed restart with other settings): the checkpoint still
    # belongs to gamma 1 and is refused.
    path = os.path.join(folder, "config.json")
    with open(path) as f:
        conf = json.load(f)
    conf["config"]["gamma"] = 2.0
    with open(path, "w") as f:
        json.dump(conf, f)
    assert main(_args(out, "--steps", "5", "--gamma", "2", "--resume")) == 2
    one_line_error(PROG, "--resume", "gamma", "checkpoint")
    conf["config"]["gamma"] = 1.0
    with open(path, "w") as f:
        json.dump(conf, f)

    # Fewer steps than the checkpoint holds.
    assert main(_args(out, "--steps", "2", "--resume")) == 2
    one_line_error(PROG, "--steps", "3")

    # The matching resume still works (and extends the run).
    assert main(_args(out, "--steps", "4", "--resume")) == 0
    assert [r["step"] for r in read_csv(os.path.join(folder, "metrics.csv"))] == [0, 1, 2, 3]


@pytest.mark.parametrize(
    "name, value", [("--gamma", "nan"), ("--gamma", "inf"), ("--gamma", "-1"), ("--seed", "-1")]
)
def test_bad_numbers_are_one_line_before_compute(tmp_path, name, value, one_line_error, refuse):
    refuse("llm_track.models.load_models")
    assert main(_args(tmp_path / "out", name, value)) == 2
    err = one_line_error(PROG, name, ">= 0")
    assert "got" in err
    assert not os.path.exists(tmp_path / "out")
