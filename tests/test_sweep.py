"""Sweeps: backend equivalence, kill-and-resume, failure recording, path confinement, fuzzing."""

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from baselines import execute, sweep
from baselines.run import main as run_main

ROOT = Path(__file__).resolve().parent.parent

SMALL = """
envs: [RLHFBlindSpot-v0, RLHFNeuralBlindSpot-v0]
agents: [naive, fpo-relaxed]
seeds: 0-2
rounds: 15
grid:
  agent.fpo_gamma: [0.05, 0.2]
batch_size: 2
"""


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("metrics.csv"))}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    return path


def test_local_backends_give_identical_files(tmp_path):
    cfg = write(tmp_path, SMALL)
    for jobs in (1, 2):
        assert (
            sweep.main(
                [
                    str(cfg),
                    "--jobs",
                    str(jobs),
                    "--out",
                    str(tmp_path / f"j{jobs}"),
                    "--no-progress",
                ]
            )
            == 0
        )
    a, b = files(tmp_path / "j1"), files(tmp_path / "j2")
    assert len(a) == 2 * 2 * 2 * 3 and a == b
    summary = json.loads((tmp_path / "j1" / "sweep_summary.json").read_text())
    assert len(summary["runs"]) == 24 and summary["failed"] == []


@pytest.mark.slow  # over 30 s; the default run keeps the local resume tests
def test_ray_backend_gives_identical_files(tmp_path):
    pytest.importorskip("ray")
    cfg = write(tmp_path, SMALL)
    assert sweep.main([str(cfg), "--out", str(tmp_path / "local"), "--no-progress"]) == 0
    assert (
        sweep.main([str(cfg), "--backend", "ray", "--jobs", "2", "--out", str(tmp_path / "ray")])
        == 0
    )
    assert files(tmp_path / "local") == files(tmp_path / "ray")


def test_failures_are_recorded_and_the_sweep_goes_on(tmp_path, capsys):
    cfg = write(
        tmp_path,
        """
envs: [RLHFBlindSpot-v0]
agents: [naive]
seeds: 0-1
rounds: 40
env_kwargs: {rm_optimizer: adam}  # SGD on the linear RM has a stability guard
grid:
  env.rm_lr: [0.005, 1.0e+300]
""",
    )
    assert sweep.main([str(cfg), "--out", str(tmp_path), "--no-progress"]) == 1
    summary = json.loads((tmp_path / "sweep_summary.json").read_text())
    assert len(summary["runs"]) == 4
    failed = {r["folder"] for r in summary["failed"]}
    assert failed == {f"RLHFBlindSpot-v0/naive@rm_lr=1e+300/seed_{s}" for s in (0, 1)}
    bad = tmp_path / "RLHFBlindSpot-v0" / "naive@rm_lr=1e+300" / "seed_0"
    assert json.loads((bad / "summary.json").read_text())["status"] == "stopped"
    assert "NaN" in json.loads((bad / "summary.json").read_text())["reason"]
    assert "Traceback" in (bad / "error.txt").read_text()
    ok = tmp_path / "RLHFBlindSpot-v0" / "naive@rm_lr=0.005" / "seed_1" / "metrics.csv"
    assert ok.read_text().count("\n") == 41
    assert "stopped" in capsys.readouterr().err


def test_policy_nan_stops_the_run_with_a_reason(tmp_path):
    assert (
        run_main(
            [
                "--agent",
                "naive",
                "--seeds",
                "0",
                "--rounds",
                "30",
                "--out",
                str(tmp_path),
                "--agent-kwargs",
                "policy_lr=1e300",
                "--no-progress",
            ]
        )
        == 1
    )
    s = json.loads((tmp_path / "RLHFBlindSpot-v0/naive/seed_0/summary.json").read_text())
    assert s["status"] == "stopped" and "NaN" in s["reason"]


@pytest.mark.parametrize("subdir", ["../escape", "/tmp/abs", "a/../../b"])
def test_config_paths_are_confined_to_the_output_folder(tmp_path, subdir, capsys):
    cfg = write(tmp_path, SMALL + f"subdir: {subdir}\n")
    assert sweep.main([str(cfg), "--out", str(tmp_path / "out")]) == 2
    assert "subdir" in capsys.readouterr().err


@pytest.mark.parametrize(
    "text,needle",
    [
        ("envs: [RLHFBlindSpot-v0]\n", "agents"),
        ("envs: [X]\nagents: [naive]\nseeds: 0\n", "X"),
        (SMALL + "colour: red\n", "colour"),
        (SMALL.replace("agent.fpo_gamma", "agentgamma"), "agentgamma"),
        ("- just a list\n", "mapping"),
        ("envs: [RLHFBlindSpot-v0]\nagents: [naive]\n", "seeds is required"),
        ("envs: [RLHFBlindSpot-v0]\nagents: [naive]\nseeds: 0\nbatch_size: 0\n", "batch_size"),
        ("envs: [RLHFBlindSpot-v0]\nagents: [naive]\nseeds: 0\nbatch_size: zero\n", "batch_size"),
        ("envs: [RLHFBlindSpot-v0]\nagents: [naive]\nseeds: 0\nrounds: -3\n", "rounds"),
        ("envs: [RLHFBlindSpot-v0]\nagents: [naive, naive]\nseeds: 0\n", "planned twice"),
        (
            "envs: [RLHFBlindSpot-v0]\nagents: [naive]\nseeds: 0\ngrid: {agent.l2: [0.1, 0.1]}\n",
            "planned twice",
        ),
    ],
)
def test_bad_sweep_files_are_one_line_errors(tmp_path, text, needle, capsys):
    assert sweep.main([str(write(tmp_path, text)), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0]


def kill_and_resume(tmp_path: Path, kills: int, seed: int) -> None:
    cfg = write(
        tmp_path,
        """
envs: [RLHFBlindSpot-v0, RLHFNeuralBlindSpot-v0]
agents: [naive, fpo]
seeds: 0-5
rounds: 120
batch_size: 1
""",
    )
    out = tmp_path / "killed"
    cmd = [
        sys.executable,
        "-m",
        "baselines.sweep",
        str(cfg),
        "--jobs",
        "2",
        "--out",
        str(out),
        "--no-progress",
    ]
    rng = random.Random(seed)
    for _ in range(kills):
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        time.sleep(rng.uniform(1.0, 4.0))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)  # the main process only: workers die with it
        proc.wait()
        # every file present is whole
        for f in out.rglob("*.json"):
            json.loads(f.read_text())
    assert subprocess.run(cmd, cwd=ROOT, capture_output=True).returncode == 0
    clean = tmp_path / "clean"
    assert sweep.main([str(cfg), "--out", str(clean), "--no-progress"]) == 0
    got, want = files(out), files(clean)
    assert got == want and len(want) == 24  # nothing lost, nothing extra, identical bytes
    assert not list(out.rglob("*.tmp"))
    summaries = list(out.rglob("summary.json"))
    assert len(summaries) == 24


@pytest.mark.slow  # over 30 s; the default run keeps the local resume tests
def test_killed_sweep_resumes_completely(tmp_path):
    kill_and_resume(tmp_path, kills=3, seed=0)


@pytest.mark.slow
def test_twenty_kills(tmp_path):
    kill_and_resume(tmp_path, kills=20, seed=1)


FLAGS = [
    "--agent",
    "--env",
    "--seeds",
    "--rounds",
    "--env-kwargs",
    "--agent-kwargs",
    "--jobs",
    "--batch-size",
    "--policy-optimizer",
    "--force",
    "--bogus",
]
VALUES = [
    "naive",
    "fpo",
    "x",
    "0",
    "-1",
    "3-1",
    "0-2",
    "1e9",
    "nan",
    "RLHFBlindSpot-v0",
    "dims=0",
    "fpo_gamma=-1",
    "signal_dims=99",
    "feedback=x",
    "=",
    "",
    "ppo",
    "kl",
    "2",
]


@pytest.mark.slow
@settings(
    max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.sampled_from(FLAGS + VALUES) | st.text(max_size=8), max_size=8))
def test_cli_fuzz_never_crashes(tmp_path, argv):
    # the trailing flags keep any valid command tiny; argparse keeps the last occurrence
    tail = ["--rounds", "2", "--seeds", "0", "--out", str(tmp_path), "--no-progress"]
    code = (
        run_main([*argv, *tail])
        if "--agent" in argv
        else run_main(["--agent", "naive", *argv, *tail])
    )
    assert code in (0, 1, 2)


def test_many_jobs_are_not_split_but_a_single_one_is(tmp_path):
    spec = sweep.load_sweep(write(tmp_path, SMALL))
    jobs, folders = sweep.plan_sweep(spec, tmp_path, force=False, jobs=2)
    assert len(folders) == 24 and all(len(j.seeds) == 2 or len(j.seeds) == 1 for j in jobs)
    assert len(jobs) == 8 * 2  # 8 (env, agent, gamma) combinations, seeds 0-2 in batches of 2
    one = sweep.load_sweep(
        write(tmp_path, "envs: [RLHFBlindSpot-v0]\nagents: [naive]\nseeds: 0-9\n")
    )
    jobs, _ = sweep.plan_sweep(one, tmp_path, force=False, jobs=2)
    assert sorted(len(j.seeds) for j in jobs) == [5, 5]
    jobs = sorted(sweep.plan_sweep(spec, tmp_path, force=False, jobs=2)[0], key=execute.job_cost)[
        ::-1
    ]
    assert jobs[0].env_id == "RLHFNeuralBlindSpot-v0" and jobs[0].agent == "fpo-relaxed"


def test_sweep_runs_sb3_optimizers_into_their_own_folders(tmp_path):
    cfg = write(
        tmp_path,
        """
envs: [RLHFContextual-v0]
agents: [naive]
policy_optimizers: [ppo]
seeds: 0
rounds: 3
""",
    )
    assert sweep.main([str(cfg), "--out", str(tmp_path), "--no-progress"]) == 0
    metrics = tmp_path / "RLHFContextual-v0" / "naive+ppo" / "seed_0" / "metrics.csv"
    assert metrics.read_text().count("\n") == 4
