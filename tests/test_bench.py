"""``python -m baselines.bench``: runs on every env kind and rejects bad arguments."""

import re

from baselines import bench


def sb3_rows(text: str) -> dict[str, float]:
    """``{agent: ratio to naive}`` from the SB3 table of one env's section."""
    return {
        m.group(1): float(m.group(3))
        for m in re.finditer(
            r"^\| (\S+)\+ppo \| ([0-9.]+) \| ([0-9.]+)x \| [0-9.]+ \([0-9.]+x\) \|$", text, re.M
        )
    }


def test_contextual_env_gets_sb3_rows_only(capsys):
    argv = ["--envs", "RLHFContextual-v0", "--agents", "naive", "fpo-exact", "kl"]
    argv += ["--repeats", "1"]
    assert bench.main(argv + ["--steps", "20", "--sb3-rounds", "3"]) == 0
    out = capsys.readouterr().out
    assert "no white-box agents on this env" in out
    assert "batching speed-up" not in out
    rows = sb3_rows(out)
    assert set(rows) == {"naive", "fpo-exact", "kl"}  # the SB3 rows follow --agents
    assert rows["naive"] == 1.0 and all(r > 0 for r in rows.values())


def test_white_box_table_and_sac_skip_on_discrete_env(capsys):
    argv = ["--agents", "naive", "fpo", "--repeats", "1", "--steps", "20", "--seeds", "2"]
    argv += ["--rounds", "3", "--single-rounds", "2", "--sb3", "none"]
    assert bench.main(["--envs", "RLHFBlindSpot-v0"] + argv) == 0
    out = capsys.readouterr().out
    cells = r"[0-9.]+ \([0-9.]+x\)"  # alone, and in one process (the judge's cost)
    assert re.search(rf"^\| naive \| [0-9.]+ \| 1\.00x \| {cells} \| {cells} \|$", out, re.M)
    assert re.search(r"^\| fpo \| ", out, re.M) and "+ppo" not in out
    assert bench.main(["--envs", "RLHFVerbosity-v0", "--steps", "20", "--sb3", "sac"]) == 0
    assert "SAC needs a Box action space" in capsys.readouterr().out


def test_bad_arguments_name_the_argument(capsys):
    assert bench.main(["--envs", "RLHFNope-v0"]) == 2
    err = capsys.readouterr().err
    assert "--envs" in err and "RLHFNope-v0" in err and "RLHFVerbosity-v0" in err
    assert bench.main(["--agents", "fpo-fast"]) == 2
    err = capsys.readouterr().err
    assert "--agents" in err and "fpo-relaxed" in err
    for argv in (["--repeats", "0"], ["--sb3-rounds", "-1"], ["--sb3", "dqn"]):
        assert bench.main(argv) == 2
        assert argv[0] in capsys.readouterr().err


def test_family_row_prints_seconds_per_agent_run_over_the_configs(capsys):
    argv = ["--envs", "RLHFNeuralBlindSpot-v0", "--agents", "naive", "fpo", "--repeats", "1"]
    argv += ["--steps", "5", "--seeds", "2", "--rounds", "3", "--single-rounds", "2"]
    argv += ["--sb3", "none", "--family", "target_value=2.0,3.0", "utility_width=0.2"]
    argv += ["--family-rounds", "2"]
    assert bench.main(argv) == 0
    out = capsys.readouterr().out
    assert "family sweep: 2 configs x 2 seeds" in out
    assert "target_value=2.0,utility_width=0.2" in out and "load average" in out
    assert re.search(r"^\| naive \| [0-9.]+ \| 1\.00x \|$", out, re.M)
    assert re.search(r"^\| fpo \| [0-9.]+ \| [0-9.]+x \|$", out, re.M)


def test_family_seconds_takes_a_list_of_env_kwargs():
    configs = bench.family_grid(["target_value=2,2.5", "utility_width=0.1,0.2"])
    assert configs[0] == {"target_value": 2, "utility_width": 0.1} and len(configs) == 4
    sec = bench.family_seconds("RLHFNeuralBlindSpot-v0", ["naive"], configs[:2], [0, 1], 2, 1)
    assert 0 < sec < 60


def test_bad_family_grid_is_a_usage_error(capsys):
    assert bench.main(["--family", "target_value"]) == 2
    assert "--family" in capsys.readouterr().err


def test_family_row_can_take_a_family_split(capsys):
    argv = ["--envs", "RLHFBlindSpot-v0", "--agents", "naive", "--repeats", "1", "--steps", "5"]
    argv += ["--seeds", "1", "--rounds", "2", "--single-rounds", "1", "--sb3", "none"]
    assert bench.main(argv + ["--family", "--family-split", "test", "--family-rounds", "1"]) == 0
    out = capsys.readouterr().out
    assert "family sweep: 16 configs x 1 seeds (family split test)" in out
    assert re.search(r"^\| naive \| [0-9.]+ \| 1\.00x \|$", out, re.M)


def tiny_neural_bench(capsys, seeds: int, *args: str) -> str:
    """The bench's output for a 2-round neural-env run of ``seeds`` seeds (``args``: agents and
    flags), no SB3 and no family row."""
    argv = ["--envs", "RLHFNeuralBlindSpot-v0", "--repeats", "1", "--steps", "5"]
    argv += ["--seeds", str(seeds), "--rounds", "2", "--single-rounds", "1"]
    assert bench.main([*argv, "--sb3", "none", "--family", *args]) == 0
    return capsys.readouterr().out


def test_agents_may_be_given_as_module_and_class(capsys, tmp_path, monkeypatch):
    (tmp_path / "bench_agent.py").write_text(
        "from agents.naive import NaiveAgent\n\n\nclass Mine(NaiveAgent):\n    name = 'mine'\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tiny_neural_bench(capsys, 1, "--agents", "naive", "bench_agent:Mine")
    assert re.search(r"^\| bench_agent:Mine \| [0-9.]+ \|", out, re.M)
    assert bench.main(["--agents", "bench_agent:Nope"]) == 2


def test_float32_column_times_each_agent_in_float32(capsys):
    out = tiny_neural_bench(capsys, 2, "--agents", "naive", "fpo", "--float32")
    assert "s/agent-run float32 (x faster) |" in out
    assert re.search(
        r"^\| fpo \| [0-9.]+ \| [0-9.]+x( \| [0-9.]+ \([0-9.]+x\)){3} \|$",
        out,
        re.M,
    )
