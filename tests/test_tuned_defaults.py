"""Tuned settings travel with the package: a family config gets its family's tuned settings."""

import json
from pathlib import Path

import pytest

from baselines.plan import family_settings, load_defaults, plan

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("env_id", ["RLHFBlindSpot-v0", "RLHFNeuralBlindSpot-v0"])
def test_the_shipped_tuned_settings_are_the_tuning_runs_choice(env_id):
    """The YAML's ``families:`` (shipped) equals what ``family_board tune`` chose (results/)."""
    for path in sorted((ROOT / "results" / "families").glob(f"tuned*{env_id}.json")):
        tuned = json.loads(path.read_text())
        assert load_defaults(env_id)["families"][tuned["family_version"]] == tuned["settings"]


def test_a_family_config_runs_its_tuned_setting_unless_given_and_records_which(tmp_path):
    def job(env_kwargs, agent_kwargs=None):
        jobs, _ = plan("RLHFBlindSpot-v0", "kl", [0], 3, env_kwargs, agent_kwargs or {}, tmp_path)
        return jobs[0]

    tuned = job({"family": "test/3"})
    assert tuned.agent_config["kl_coef"] == family_settings(
        "RLHFBlindSpot-v0", {"family": "v1/test/3"}, "kl"
    )["kl_coef"] == 0.3  # fmt: skip
    assert tuned.tuned == "kl_coef" and tuned.settings(0)["tuned"] == "kl_coef"
    given = job({"family": "test/3"}, {"kl_coef": 0.1})
    assert given.agent_config["kl_coef"] == 0.1 and "tuned" not in given.settings(0)
    default = job({})
    assert default.agent_config["kl_coef"] == 0.1 and "tuned" not in default.settings(0)
    assert job({"family": "test/3"}).digest(0) != default.digest(0)
