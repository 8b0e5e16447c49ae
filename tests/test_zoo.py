"""rl-zoo3 from the shipped hyperparameter files (zoo/) and the CleanRL-style example
(examples/): both train and log the true utility beside the proxy."""

import csv
import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import rlhf_envs

ROOT = Path(__file__).resolve().parents[1]
BOX_ENV_IDS = [*rlhf_envs.BLIND_SPOT_ENV_IDS, "RLHFContextual-v0"]
RUNS = [("ppo", e) for e in rlhf_envs.ENV_IDS] + [("sac", e) for e in BOX_ENV_IDS]
needs_zoo = pytest.mark.skipif(
    importlib.util.find_spec("rl_zoo3") is None,
    reason="rl_zoo3 is not installed (pip install -e '.[zoo]')",
)


def test_hyperparameter_files_cover_the_envs_and_log_the_truth():
    for algo, env_ids in (("ppo", rlhf_envs.ENV_IDS), ("sac", BOX_ENV_IDS)):
        params = yaml.safe_load((ROOT / "zoo" / f"{algo}.yml").read_text())
        assert {k for k in params if not k.startswith("_")} == set(env_ids)
        for env_id in env_ids:
            p = params[env_id]
            assert 1000 <= p["n_timesteps"] <= 50_000  # about the harness's rounds, not 1e6
            assert "'true_utility'" in p["monitor_kwargs"]
            assert p["callback"] == [{"rlhf_envs.wrappers.LogTruth": {"log_every": 500}}]
            if p.get("n_envs", 1) > 1:  # the copies sample for one reward model
                assert p["vec_env_wrapper"] == "rlhf_envs.vector.SharedFollower"


def monitor_rows(path: Path) -> list[dict]:
    with open(path) as f:
        next(f)  # Monitor's JSON header line
        return list(csv.DictReader(f))


@pytest.mark.slow
@needs_zoo
@pytest.mark.parametrize("algo,env_id", RUNS)
def test_rl_zoo3_trains_from_the_shipped_files(algo, env_id, tmp_path):
    cmd = [sys.executable, "-m", "rl_zoo3.train", "--algo", algo, "--env", env_id]
    cmd += ["--gym-packages", "rlhf_envs", "--conf-file", str(ROOT / "zoo" / f"{algo}.yml")]
    cmd += ["--log-interval", "-2", "--num-threads", "1", "-n", "2000", "--seed", "0"]
    out = subprocess.run(
        [*cmd, "-f", str(tmp_path)], capture_output=True, text=True, timeout=900, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("ep_true_utility_mean") >= 3  # a table every 500 steps
    monitors = sorted(tmp_path.glob(f"{algo}/{env_id}_1/*.monitor.csv"))
    assert len(monitors) == (4 if algo == "ppo" else 1)
    rows = [r for m in monitors for r in monitor_rows(m)]
    assert len(rows) >= 100 and {"r", "true_utility", "proxy_reward"} <= set(rows[0])
    assert all(math.isfinite(float(r["true_utility"])) for r in rows)


@pytest.mark.slow
def test_cleanrl_example_logs_proxy_and_truth(tmp_path):
    log = tmp_path / "ppo.csv"
    cmd = [sys.executable, str(ROOT / "examples" / "cleanrl_ppo.py"), "--csv", str(log)]
    out = subprocess.run(
        [*cmd, "--total-timesteps", "2048"], capture_output=True, text=True, timeout=900
    )
    assert out.returncode == 0, out.stderr[-3000:]
    with open(log) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2048 // 64 and rows[-1]["global_step"] == "2048"
    assert all(math.isfinite(float(r["true_utility"])) for r in rows)
    assert "true utility=" in out.stdout
