"""Run folders that cannot be lost, mixed, overwritten or forged, and bad input caught early.

Each test here failed on the harness before run folders were locked and sealed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from baselines import results, sweep
from baselines.run import main

ROOT = Path(__file__).resolve().parent.parent
LINEAR = "RLHFBlindSpot-v0"


def run(*args: str) -> int:
    return main([*args, "--no-progress"])


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name != ".lock"}


def test_finished_runs_are_sealed_and_verified(tmp_path):
    assert run("--agent", "naive", "--seeds", "0", "--rounds", "30", "--out", str(tmp_path)) == 0
    folder = results.run_dir(tmp_path, LINEAR, "naive", 0)
    manifest = json.loads((folder / results.MANIFEST).read_text())["files"]
    assert set(manifest) == {"config.json", "metrics.csv", "summary.json"}
    assert manifest["metrics.csv"]["rows"] == 30
    assert results.verify(folder) == ""


@pytest.mark.parametrize(
    "damage,reason",
    [
        (lambda f: (f / "metrics.csv").write_text("round\n1\n"), "metrics.csv does not match"),
        (lambda f: (f / "metrics.csv").unlink(), "metrics.csv is missing"),
        (lambda f: (f / results.MANIFEST).unlink(), "no manifest.json"),
        (lambda f: (f / results.MANIFEST).write_text("{"), "manifest.json unreadable"),
    ],
)
def test_rerun_redoes_a_run_that_fails_verification_and_says_so(tmp_path, capsys, damage, reason):
    args = ("--agent", "naive", "--seeds", "0-1", "--rounds", "30", "--out", str(tmp_path))
    assert run(*args) == 0
    folder = results.run_dir(tmp_path, LINEAR, "naive", 0)
    sound = results.run_dir(tmp_path, LINEAR, "naive", 1)
    want, untouched = (folder / "metrics.csv").read_bytes(), snapshot(sound)
    damage(folder)
    capsys.readouterr()
    assert run(*args) == 0
    err = capsys.readouterr().err
    assert f"redoing {folder}: {reason}" in err
    assert (folder / "metrics.csv").read_bytes() == want and results.verify(folder) == ""
    assert snapshot(sound) == untouched  # the sound run was left alone


def test_a_folder_held_by_another_writer_is_left_alone(tmp_path, capsys):
    args = ("--agent", "naive", "--seeds", "0-1", "--rounds", "20", "--out", str(tmp_path))
    assert run(*args) == 0
    held = results.run_dir(tmp_path, LINEAR, "naive", 0)
    other = results.run_dir(tmp_path, LINEAR, "naive", 1)
    (held / ".metrics.csv.abc.tmp").write_text("another writer's file in flight")
    before, other_before = snapshot(held), (other / "summary.json").read_bytes()
    lock = results.RunLock(held)
    assert lock.acquire()
    try:
        assert run(*args, "--force") == 1
        assert snapshot(held) == before  # its temp file included: nothing deleted under it
        assert (other / "summary.json").read_bytes() != other_before  # redone (wall time)
        assert "left to another process" in capsys.readouterr().err
    finally:
        lock.release()
    assert results.RunLock(held).acquire()  # released: the next writer gets it


def test_two_processes_on_one_out_never_crash(tmp_path):
    cmd = [sys.executable, "-m", "baselines.run", "--agent", "naive", "--seeds", "0-3"]
    cmd += ["--batch-size", "1", "--rounds", "300", "--out", str(tmp_path), "--force"]
    cmd += ["--no-progress"]
    procs = [subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True) for _ in (0, 1)]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    for p, err in zip(procs, errs, strict=True):
        assert "Traceback" not in err and p.returncode in (0, 1), err
    for seed in range(4):
        assert results.verify(results.run_dir(tmp_path, LINEAR, "naive", seed)) == ""


def test_each_sb3_seed_is_saved_when_it_finishes(tmp_path, monkeypatch):
    """A failure (or a kill) in the second seed keeps the first seed's finished run."""
    import baselines.sb3_runner as sb3_runner

    real = sb3_runner.learn_sb3

    def second_seed_fails(*args, **kwargs):
        if args[1] == 1:  # seed
            raise RuntimeError("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(sb3_runner, "learn_sb3", second_seed_fails)
    code = run(
        "--agent", "naive", "--env", "RLHFVerbosity-v0", "--policy-optimizer", "ppo",
        "--seeds", "0-1", "--rounds", "3", "--out", str(tmp_path),
    )  # fmt: skip
    assert code == 1
    name = "naive+ppo"
    assert results.run_state(results.run_dir(tmp_path, "RLHFVerbosity-v0", name, 0), "x")[0] in (
        "other",  # sealed and ok (the digest passed here is a dummy)
    )
    failed = json.loads(
        (results.run_dir(tmp_path, "RLHFVerbosity-v0", name, 1) / "summary.json").read_text()
    )
    assert failed["status"] == "failed" and "killed" in failed["reason"]


def _session_processes(sid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == sid and fields[0] != "Z":  # field 6 of stat: session id
                out.append(int(d.name))
    return out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_no_process_outlives_a_killed_run(tmp_path):
    cmd = [sys.executable, "-m", "baselines.run", "--agent", "naive", "--seeds", "0-3"]
    cmd += ["--jobs", "2", "--batch-size", "1", "--rounds", "100000", "--out", str(tmp_path)]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.time() + 60
        while time.time() < deadline and len(_session_processes(proc.pid)) < 4:
            time.sleep(0.2)  # the parent, the resource tracker and two workers
        assert len(_session_processes(proc.pid)) >= 4
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.time() + 20
        while time.time() < deadline and _session_processes(proc.pid):
            time.sleep(0.2)
        assert _session_processes(proc.pid) == []
    finally:
        for pid in _session_processes(proc.pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--seeds", "0-99999999999"], "--seeds must be ints in [0, 2^31)"),
        (["--seeds", "0-100000"], "--max-runs"),
        (["--seeds", "0-5", "--max-runs", "3"], "more than 3 seeds"),
        (["--max-runs", "0"], "--max-runs: must be an integer >= 1"),
        (["--agent-kwargs", "rounds=1000000000"], "--max-rounds"),
        (["--rounds", "2000000"], "--max-rounds"),
        (["--rounds", "5", "--agent-kwargs", "rounds=7"], "disagree"),
    ],
)
def test_size_limits_are_one_line_errors_before_any_work(tmp_path, capsys, argv, needle):
    start = time.perf_counter()
    assert run("--agent", "naive", "--out", str(tmp_path / "o"), *argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert time.perf_counter() - start < 20 and not (tmp_path / "o").exists()


def test_seed_cap_can_be_raised(capsys):
    # past the seed check, stopped by the unknown agent field (nothing runs)
    assert (
        run("--agent", "naive", "--seeds", "0-1500", "--max-runs", "2000", "--agent-kwargs", "x=1")
        == 2
    )
    assert "unknown name(s) ['x']" in capsys.readouterr().err


def test_agent_kwargs_rounds_win_over_the_yaml(tmp_path):
    assert (
        run(
            "--agent", "naive", "--seeds", "0", "--agent-kwargs", "rounds=7", "--out", str(tmp_path)
        )
        == 0
    )
    metrics = results.run_dir(tmp_path, LINEAR, "naive", 0) / "metrics.csv"
    assert metrics.read_text().count("\n") == 8  # header + 7 rounds, not the YAML's 2,000


def test_out_that_is_a_file_is_an_error_before_compute(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("keep me")
    assert run("--agent", "naive", "--seeds", "0", "--rounds", "5", "--out", str(target)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--out" in err[0] and "not a folder" in err[0]
    assert target.read_text() == "keep me"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_out_is_an_error_before_compute(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        assert run("--agent", "naive", "--seeds", "0", "--rounds", "5", "--out", str(ro)) == 2
        assert "cannot write" in capsys.readouterr().err
    finally:
        ro.chmod(0o700)


def test_sweep_size_cap(tmp_path, capsys):
    cfg = tmp_path / "s.yaml"
    cfg.write_text("envs: [RLHFBlindSpot-v0]\nagents: [naive, fpo]\nseeds: 0-9\nrounds: 5\n")
    assert sweep.main([str(cfg), "--out", str(tmp_path / "o"), "--max-runs", "15"]) == 2
    assert "20 run folders" in capsys.readouterr().err


def test_ray_address_that_cannot_be_reached_fails_fast(tmp_path, capsys):
    pytest.importorskip("ray")
    cfg = tmp_path / "s.yaml"
    cfg.write_text("envs: [RLHFBlindSpot-v0]\nagents: [naive]\nseeds: 0\nrounds: 5\n")
    start = time.perf_counter()
    code = sweep.main(
        [str(cfg), "--backend", "ray", "--address", "127.0.0.1:1", "--out", str(tmp_path)]
    )
    assert code == 2 and time.perf_counter() - start < 60
    err = capsys.readouterr().err
    assert "--address: cannot reach a Ray cluster at 127.0.0.1:1" in err and "Traceback" not in err


def test_plot_never_writes_outside_its_folder(tmp_path, capsys):
    from baselines import plot

    assert (
        run("--agent", "naive", "--seeds", "0-1", "--rounds", "10", "--out", str(tmp_path / "r"))
        == 0
    )
    folder = results.run_dir(tmp_path / "r", LINEAR, "naive", 1)
    s = json.loads((folder / "summary.json").read_text())
    s["env_id"] = "../../ESCAPED"
    (folder / "summary.json").write_text(json.dumps(s))
    results.write_manifest(folder, ["config.json", "metrics.csv", "summary.json"])  # forged
    assert plot.main([str(tmp_path / "r"), "--out", str(tmp_path / "plots")]) == 0
    assert "unknown env_id" in capsys.readouterr().err
    assert not list(tmp_path.rglob("ESCAPED*"))


@pytest.mark.parametrize(
    "module,argv,flag",
    [
        (
            "family_board",
            ["board", "RLHFBlindSpot-v0", "--results", "results/families"],
            "--results",
        ),
        ("family_board", ["tune", "RLHFBlindSpot-v0", "--results", "results/x"], "--results"),
        ("animate", ["--out", "results/figures/collapse.gif"], "--out"),
        ("leaderboard", ["--results", "results"], "--results"),
    ],
)
def test_commands_write_into_committed_results_only_with_force(module, argv, flag, capsys):
    import importlib

    tracked = {p: p.stat().st_mtime_ns for p in (ROOT / "results").rglob("*") if p.is_file()}
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        assert importlib.import_module(f"baselines.{module}").main(argv) == 2
    finally:
        os.chdir(cwd)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{flag} results" in err[0] and "--force" in err[0]
    assert {
        p: p.stat().st_mtime_ns for p in (ROOT / "results").rglob("*") if p.is_file()
    } == tracked
