"""Env families: frozen splits drawn from the documented distribution, addressable by name."""

import gymnasium as gym
import pytest

import rlhf_envs  # noqa: F401
from baselines.run import main as run_main
from rlhf_envs import families

ENVS = list(families.DISTRIBUTIONS)
#: (env, version, split prefix) of every version's frozen lists (v2 where its lists exist)
LISTS = [
    (env, v, pre)
    for env in ENVS
    for v, pre in (("v1", ""), ("v2", "v2/"))
    if env in families._FROZEN[v]["configs"]
]
SPLITS = [(env, pre + split) for env, _, pre in LISTS for split in families.SPLITS]


@pytest.mark.parametrize("env_id, split", SPLITS)
def test_splits_are_the_recorded_draws(env_id, split):
    """Each version's lists are its own generator's draws (v1's as before v2 existed)."""
    version, name = families._check(env_id, split)
    frozen = families.configs(env_id, split)
    index = families._FROZEN[version]["candidates"][env_id][name]
    assert len(frozen) == len(index) >= families.SIZE
    assert list(index) == sorted(set(index))  # the first learnable ones, in draw order
    draws = families.candidates(env_id, split, max(index) + 1)
    assert frozen == [draws[i] for i in index]
    assert repr(frozen) == repr([draws[i] for i in index])  # the same types and digits


@pytest.mark.parametrize("env_id, version, pre", LISTS)
def test_train_and_test_differ_and_stay_in_the_distribution(env_id, version, pre):
    train, test = (families.configs(env_id, pre + s) for s in families.SPLITS)
    assert not {repr(c) for c in train} & {repr(c) for c in test}
    dist = families.VERSION_DISTRIBUTIONS[version][env_id]
    for c in train + test:
        assert set(c) == set(dist)
        for k, knob in dist.items():
            if knob.kind == "choice":
                assert c[k] in knob.choices
            else:
                assert knob.low * 0.999 <= abs(c[k]) <= knob.high * 1.001


def test_v2_is_v1_plus_a_biased_labeler_and_v1_stays_the_default():
    v1, v2 = (families.VERSION_DISTRIBUTIONS[v]["RLHFBlindSpot-v0"] for v in ("v1", "v2"))
    assert families.VERSION == "v1" and v1 is families.DISTRIBUTIONS["RLHFBlindSpot-v0"]
    assert set(v2) - set(v1) == {"labeler_bias", "labeler_bias_dims", "feedback"}
    draws = families.candidates("RLHFBlindSpot-v0", "v2/train", 60)
    assert {d["feedback"] for d in draws} == {"rating", "preference"}
    assert {d["labeler_bias"] > 0 for d in draws} == {True, False}
    assert families.config("RLHFBlindSpot-v0", "train/3") == families.config(
        "RLHFBlindSpot-v0", "v1/train/3"
    )
    assert families.configs("RLHFBlindSpot-v0", "train") == families.configs(
        "RLHFBlindSpot-v0", "v1/train"
    )


def test_draws_are_deterministic_and_split_specific():
    a = families.candidates("RLHFBlindSpot-v0", "train", 5)
    assert a == families.candidates("RLHFBlindSpot-v0", "train", 5)
    assert a != families.candidates("RLHFBlindSpot-v0", "test", 5)
    b = families.candidates("RLHFBlindSpot-v0", "v2/train", 5)
    assert [{k: d[k] for k in a[0]} for d in b] != a  # v2 has its own generator


@pytest.mark.parametrize("env_id, name", [(env, pre + "test/3") for env, _, pre in LISTS])
def test_gym_make_with_a_family_name(env_id, name):
    cfg = families.config(env_id, name)
    env = gym.make(env_id, family=name)
    for k, v in cfg.items():
        assert getattr(env.unwrapped.config, k) == (tuple(v) if isinstance(v, list) else v)
    if name == "test/3":
        assert families.config(env_id, f"{families.VERSION}/test/3") == cfg
    vec = gym.make_vec(env_id, num_envs=2, vectorization_mode="vector_entry_point", family=name)
    assert vec.unwrapped.config == env.unwrapped.config
    # an explicit kwarg the family leaves alone is kept; one equal to the family's is fine
    key, value = next(iter(cfg.items()))
    env2 = gym.make(env_id, family=name, action_bound=5.0, **{key: value})
    assert env2.unwrapped.config.action_bound == 5.0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"family": "test/3", "target_value": 123.0}, "contradicts"),
        ({"family": "test/999"}, "index"),
        ({"family": "valid/1"}, "split"),
        ({"family": "v0/test/1"}, "version"),
        ({"family": "test"}, "family must look like"),
        ({"family": 3}, "family must look like"),
    ],
)
def test_bad_family_is_one_line_naming_it(kwargs, match):
    with pytest.raises(ValueError, match=match) as e:
        gym.make("RLHFBlindSpot-v0", **kwargs)
    assert "\n" not in str(e.value) and "family" in str(e.value)


def test_family_from_the_cli(tmp_path):
    argv = ["--agent", "naive", "--seeds", "0", "--rounds", "3", "--out", str(tmp_path)]
    assert run_main([*argv, "--env-kwargs", "family=train/1", "--no-progress"]) == 0
    assert run_main([*argv, "--env-kwargs", "family=train/1", "target_value=99"]) == 2


def test_tune_then_board_on_a_tiny_family(tmp_path, monkeypatch):
    """The protocol end to end on two configs, two seeds and 20 rounds: the board refuses to
    run before tuning, then uses only the frozen settings; naive scores 0 and the oracle 1 on
    average by construction."""
    import json

    from baselines import family_board as fb
    from baselines import results

    env_id = "RLHFBlindSpot-v0"
    small = families.FAMILIES[env_id]["train"][:2]
    monkeypatch.setitem(families.FAMILIES, env_id, {"train": small, "test": small[::-1]})
    monkeypatch.setitem(families.ROUNDS, env_id, 20)
    monkeypatch.setattr(fb, "GRID", {"elite-anchor": {"anchor_coef": [1.0, 10.0]}})
    monkeypatch.setattr(fb, "TUNE_SEEDS", [100, 101])
    monkeypatch.setattr(fb, "TEST_SEEDS", [0, 1])
    monkeypatch.setattr(fb, "BUDGETED", {env_id: ("fpo-relaxed",)})
    args = ["--jobs", "1", "--out", str(tmp_path / "runs"), "--results", str(tmp_path / "res")]
    assert fb.main(["board", env_id, *args]) == 2  # no tuned settings yet
    assert fb.main(["tune", env_id, *args]) == 0
    tuned = json.loads((tmp_path / "res" / f"tuned_{env_id}.json").read_text())
    assert tuned["split"] == "train" and set(tuned["settings"]) == {"elite-anchor"}
    tune_rows = results.read_csv(tmp_path / "res" / f"tune_{env_id}.csv")
    best = max((r for r in tune_rows if r["agent"] == "elite-anchor"), key=lambda r: r["iqm"])
    assert json.loads(best["setting"]) == tuned["settings"]["elite-anchor"]
    assert fb.main(["board", env_id, *args]) == 0
    rows = {r["agent"]: r for r in results.read_csv(tmp_path / "res" / f"board_{env_id}.csv")}
    controls = {"naive@budget=fpo-relaxed", "oracle-values@budget=fpo-relaxed"}
    assert set(rows) == {"naive", "oracle", "elite-anchor", "fpo-relaxed", *controls}
    # the controls, generated from fpo-relaxed's runs: its 2 labeler calls per label
    assert json.loads(rows["naive@budget=fpo-relaxed"]["setting"]) == {
        "samples_per_round": 2, "buffer_size": 2}  # fmt: skip
    assert rows["naive@budget=fpo-relaxed"]["labeler_calls"] == rows["fpo-relaxed"]["labeler_calls"]
    assert json.loads(rows["oracle-values@budget=fpo-relaxed"]["setting"]) == {"value_queries": 1}
    assert rows["naive"]["mean"] == pytest.approx(0.0, abs=1e-12)
    assert rows["oracle"]["mean"] == pytest.approx(1.0, abs=1e-12)
    assert rows["elite-anchor"]["setting"] == json.dumps(tuned["settings"]["elite-anchor"])
    # the test runs are test-split configs with the reporting seeds only
    seeds = {
        json.loads(p.read_text())["seed"]
        for p in (tmp_path / "runs").rglob("config.json")
        if "family" in json.loads(p.read_text())["env_kwargs"]
        and json.loads(p.read_text())["env_kwargs"]["family"].startswith("test/")
    }
    assert seeds == {0, 1}
    md = (tmp_path / "res" / f"BOARD_{env_id}.md").read_text()
    assert "test split" in md and "| naive |" in md
    assert "| fpo-relaxed | naive@budget=fpo-relaxed | 4 / 4 |" in md  # the generated block
    fam = tmp_path / "site_results" / "families"  # the site reads RESULTS/../families/
    fam.mkdir(parents=True)
    (fam / f"tuned_{env_id}.json").write_text(
        (tmp_path / "res" / f"tuned_{env_id}.json").read_text()
    )
    site = ["--site", str(tmp_path / "site"), "--results", str(fam)]
    assert fb.main(["board", env_id, *args, *site]) == 0
    assert "naive@budget=fpo-relaxed" in (tmp_path / "site" / "index.html").read_text()
    # an agent added to the board (listed before elite-anchor) changes no other agent's row,
    # the bootstrap CIs included
    frozen = tmp_path / "res" / f"tuned_{env_id}.json"
    tuned["settings"] = {"ensemble": {"ensemble_k": 0.5}, **tuned["settings"]}
    frozen.write_text(json.dumps(tuned))
    assert fb.main(["board", env_id, *args]) == 0
    more = {r["agent"]: r for r in results.read_csv(tmp_path / "res" / f"board_{env_id}.csv")}
    assert set(more) == {"naive", "oracle", "elite-anchor", "ensemble", "fpo-relaxed", *controls}
    for agent, row in rows.items():
        assert more[agent] == row, agent


def test_a_diverged_run_scores_zero_and_other_failures_stop_the_board(tmp_path):
    from baselines import family_board as fb
    from baselines.plan import CLIError

    reason = "policy became NaN/inf or diverged past |y| = 1e+06 at round 97 (seeds [109]); ..."
    assert fb._final({"status": "stopped", "reason": reason}, tmp_path) == 0.0
    assert fb._final({"status": "ok", "final_true_utility": 7.5}, tmp_path) == 7.5
    nan_rm = "reward model parameter 'W1' became NaN/inf at round 3 (seeds [0])"
    with pytest.raises(CLIError, match="reward model parameter"):
        fb._final({"status": "stopped", "reason": nan_rm}, tmp_path)
    with pytest.raises(CLIError, match="failed"):
        fb._final({"status": "failed", "reason": "ValueError: x"}, tmp_path)
    # the reason's start is the white-box loop's own message
    import inspect

    from agents import whitebox

    assert fb.DIVERGED_REASON in inspect.getsource(whitebox.Player.optimise)
    assert fb.DIVERGED_REASON in inspect.getsource(whitebox._check_play)  # the judge's check


def test_a_v2_or_hidden_board_ranks_its_agents_against_v1(tmp_path):
    """Ranks and verdicts read only disjoint intervals; agents reading the truth are left out."""
    from baselines import family_board as fb
    from baselines import results

    def row(agent, iqm, lo, hi, reads="current_rm"):
        return dict(agent=agent, reads=reads, iqm=iqm, iqm_lo=lo, iqm_hi=hi)

    v1 = [row("a", 0.9, 0.8, 1.0), row("b", 0.5, 0.4, 0.6), row("c", 0.45, 0.3, 0.55)]
    results.write_csv(tmp_path / "v1.csv", [*v1, row("oracle", 1, 1, 1, "truth_values")])
    here = [row("a", 0.2, 0.1, 0.3), row("b", 0.5, 0.45, 0.55), row("c", 0.7, 0.65, 0.75)]
    here += [row("oracle", 1, 1, 1, "truth_values"), row("new", 0.1, 0.0, 0.2)]
    lines = fb._against_v1(here, tmp_path / "v1.csv", "v2/test")
    cells = {ln.split(" | ")[0][2:]: ln.strip("| ").split(" | ") for ln in lines if "[" in ln}
    assert set(cells) == {"a", "b", "c"}  # in both boards, no truth read
    assert cells["c"][3:] == ["2-3", "1", "higher"]
    assert cells["b"][3:] == ["2-3", "2", "no difference detected"]
    assert cells["a"][3:] == ["1", "3", "lower"]


def test_tune_and_board_in_float32_stay_apart_from_float64(tmp_path, monkeypatch):
    import json

    from baselines import family_board as fb

    env_id = "RLHFBlindSpot-v0"
    small = families.FAMILIES[env_id]["train"][:2]
    monkeypatch.setitem(families.FAMILIES, env_id, {"train": small, "test": small[::-1]})
    monkeypatch.setitem(families.ROUNDS, env_id, 10)
    monkeypatch.setattr(fb, "GRID", {"kl": {"kl_coef": [0.1]}})
    monkeypatch.setattr(fb, "TUNE_SEEDS", [100, 101])
    monkeypatch.setattr(fb, "TEST_SEEDS", [0, 1])
    args = ["--jobs", "1", "--out", str(tmp_path / "runs"), "--results", str(tmp_path / "res")]
    assert fb.main(["tune", env_id, *args, "--dtype", "float16"]) == 2
    assert fb.main(["tune", env_id, *args, "--dtype", "float32"]) == 0
    tuned = json.loads((tmp_path / "res" / f"tuned_{env_id}.json").read_text())
    assert tuned["dtype"] == "float32"
    assert fb.main(["board", env_id, *args]) == 2  # tuned in float32: a float64 board refuses
    assert fb.main(["board", env_id, *args, "--dtype", "float32"]) == 0
    md = (tmp_path / "res" / f"BOARD_{env_id}.md").read_text()
    assert "Followers in float32" in md
    kwargs = [
        json.loads(p.read_text())["env_kwargs"] for p in (tmp_path / "runs").rglob("config.json")
    ]
    assert kwargs and all(kw["dtype"] == "float32" for kw in kwargs)


@pytest.mark.parametrize("env_id, version, pre", LISTS)
def test_the_check_prints_the_data_file_entry_of_its_learnable_candidates(env_id, version, pre):
    import json
    from importlib import resources

    from baselines.family_board import frozen_entry

    lists = families._FROZEN[version]
    rows = [{"split": pre + "train", "candidate": 99, "learnable": False, "target_value": 0.0}]
    for split in families.SPLITS:
        for i, cfg in zip(
            lists["candidates"][env_id][split], lists["configs"][env_id][split], strict=True
        ):
            rows.append({"split": pre + split, "candidate": i, "learnable": True, **cfg})
    path = f"data/families_{version}.json"
    data = json.loads(resources.files("rlhf_envs").joinpath(path).read_text())
    entry = frozen_entry(env_id, rows, families.SIZE, version)
    assert json.loads(entry) == {env_id: data[env_id]}
