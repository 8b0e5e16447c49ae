"""The hidden split: configs drawn with a secret that only the judge's process holds."""

import json
import os
import subprocess
import sys

import pytest

from rlhf_envs import families

LINEAR = "RLHFBlindSpot-v0"
SECRET = "judge-only-7f3a9c1e"

SPY = '''
import json, os, sys
from agents.naive import NaiveAgent

class Spy(NaiveAgent):
    """Acts naive and writes down what its process can see."""
    name = "spy"

    def start(self, core):
        seen = {"environ": dict(os.environ), "argv": sys.argv, "config": vars(core.config)}
        with open(os.environ["SPY_DUMP"], "w") as f:
            json.dump(seen, f, default=str)
'''


@pytest.fixture
def secret():
    families.set_secret(SECRET)
    yield SECRET
    families.set_secret(None)


def test_hidden_configs_need_the_secret_and_follow_it(secret):
    drawn = families.hidden_configs(LINEAR)
    assert len(drawn) == families.SIZE and drawn == families.hidden_configs(LINEAR)
    assert drawn != families.configs(LINEAR, "test")
    assert set(drawn[0]) == set(families.DISTRIBUTIONS[LINEAR])
    families.set_secret("another")
    assert families.hidden_configs(LINEAR) != drawn
    families.set_secret(None)
    with pytest.raises(ValueError, match=families.SECRET_VARIABLE):
        families.config(LINEAR, "hidden/0")


def test_a_wrong_commitment_is_refused(secret):
    with pytest.raises(ValueError, match="hidden_commitment"):
        families.expand(LINEAR, {"family": "hidden/0", "hidden_commitment": "0" * 64})
    kept = families.expand(
        LINEAR, {"family": "hidden/2", "hidden_commitment": families.commitment()}
    )
    assert kept == families.hidden_configs(LINEAR)[2]


def test_the_secret_never_reaches_the_agent_or_the_run_folder(tmp_path, secret):
    (tmp_path / "spy_agent.py").write_text(SPY)
    dump, out = tmp_path / "seen.json", tmp_path / "runs"
    commit = families.commitment()
    env = {**os.environ, families.SECRET_VARIABLE: SECRET, "SPY_DUMP": str(dump)}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), os.getcwd(), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "baselines.run", "--env", LINEAR, "--agent", "spy_agent:Spy"]
    cmd += ["--seeds", "0", "--rounds", "3", "--out", str(out), "--env-kwargs", "family=hidden/1"]
    cmd += [f"hidden_commitment={commit}"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(dump.read_text())
    truth = families.hidden_configs(LINEAR)[1]
    assert SECRET not in json.dumps(seen)  # not in its environment, arguments or settings
    assert not {"target_value", "utility_width", "signal_dims", "label_noise"} & set(seen["config"])
    folder = out / LINEAR / "spy" / "seed_0"
    for f in folder.iterdir():
        text = f.read_text()
        assert SECRET not in text
        if f.name == "config.json":
            kwargs = json.loads(text)["env_kwargs"]
            assert kwargs == {"family": "hidden/1", "hidden_commitment": commit}
            assert str(truth["target_value"]) not in text
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["status"] == "ok"
