"""Collapse maps: a tiny grid end to end, resumption, the paired comparisons and their generated
block, bad input."""

import json

import numpy as np
import pytest
from scipy import stats as sps

from baselines import map as cmap
from baselines import results, stats

ENV = "RLHFBlindSpot-v0"


@pytest.fixture(scope="module")
def tiny_map(tmp_path_factory):
    out = tmp_path_factory.mktemp("maps")
    argv = [
        ENV,
        "--x",
        "target_value=1.5,2.5",
        "--y",
        "rm_init_noise=0.05,0.3",
        "--agents",
        "fpo,oracle",
        "--seeds",
        "0-2",
        "--rounds",
        "30",
        "--jobs",
        "1",
        "--out",
        str(out),
        "--name",
        "tiny",
        "--no-progress",
    ]
    assert cmap.main(argv) == 0
    return out / "tiny", argv


def test_map_writes_cells_with_paired_differences(tiny_map):
    folder, _ = tiny_map
    rows = results.read_csv(folder / "tiny.csv")
    assert len(rows) == 2 * 2 * 3  # cells x (naive + 2 agents)
    assert {r["agent"] for r in rows} == {"naive", "fpo", "oracle"}
    assert (folder / "tiny.png").stat().st_size > 10_000
    # the difference is paired by seed: recompute it from the run folders
    r = next(
        r
        for r in rows
        if r["agent"] == "oracle" and r["target_value"] == 2.5 and r["rm_init_noise"] == 0.3
    )
    diffs = []
    for seed in range(3):
        u = {}
        for agent in ("naive", "oracle"):
            run = f"{agent}@rm_init_noise=0.3,target_value=2.5"
            s = json.loads((folder / ENV / run / f"seed_{seed}" / "summary.json").read_text())
            u[agent] = s["final_true_utility"]
        diffs.append(u["oracle"] - u["naive"])
    assert r["diff_vs_naive"] == pytest.approx(np.mean(diffs))
    # the t CI of the per-seed differences (stats.compare, paired)
    half = sps.t.ppf(0.975, 2) * np.std(diffs, ddof=1) / np.sqrt(3)
    assert (r["diff_lo"], r["diff_hi"]) == pytest.approx(
        (np.mean(diffs) - half, np.mean(diffs) + half)
    )
    assert r["p_lo"] <= r["p_improvement"] <= r["p_hi"] and r["n_paired"] == 3
    assert r["verdict"] == stats.verdict(
        *(round(r[k], 2) for k in ("diff_lo", "diff_hi", "p_lo", "p_hi"))
    )
    assert r["significant"] == str(r["verdict"] != "no difference detected")
    assert r["n"] == 3 and r["labeler_calls"] > 30  # the oracle's gradient queries are counted
    naive = [r for r in rows if r["agent"] == "naive"]
    assert all(r["diff_vs_naive"] != r["diff_vs_naive"] for r in naive)  # NaN: no self-diff
    assert all(r["significant"] == "False" for r in naive)


def test_map_page_states_the_comparisons_in_a_generated_block(tiny_map):
    folder, argv = tiny_map
    text = (folder / "tiny.md").read_text()
    assert text.startswith("# Collapse map: ")
    assert "`python -m baselines.map " + " ".join(argv) + "`" in text
    assert text.count(stats.BLOCK_START) == text.count(stats.BLOCK_END) == 1
    block = text.split(stats.BLOCK_START)[1].split(stats.BLOCK_END)[0]
    lines = [ln for ln in block.splitlines() if ln.startswith("| ") and not ln.startswith("| A |")]
    others = [r for r in results.read_csv(folder / "tiny.csv") if r["agent"] != "naive"]
    assert len(lines) == len(others) == 2 * 2 * 2  # every (cell, agent other than naive)
    for line, r in zip(lines, others, strict=True):
        at = f"(target_value={r['target_value']}, rm_init_noise={r['rm_init_noise']})"
        d = f"{r['diff_vs_naive']:+.2f} [{r['diff_lo']:+.2f}, {r['diff_hi']:+.2f}]"
        p = f"{r['p_improvement']:.2f} [{r['p_lo']:.2f}, {r['p_hi']:.2f}]"
        assert line == f"| {r['agent']} {at} | naive {at} | 3 / 3 | {d} | {p} | {r['verdict']} |"
        shown = (round(r[k], 2) for k in ("diff_lo", "diff_hi", "p_lo", "p_hi"))
        assert r["verdict"] == stats.verdict(*shown)  # the rule, on the printed numbers


def test_map_resumes_without_recomputing(tiny_map, capsys):
    folder, argv = tiny_map
    before = (folder / "tiny.csv").read_text()
    assert cmap.main(argv) == 0
    meta = json.loads((folder / "tiny.json").read_text())
    assert meta["runs_computed_now"] == 0 and meta["runs"] == 2 * 2 * 3 * 3
    assert (folder / "tiny.csv").read_text() == before


def test_a_map_runs_and_compares_the_budget_controls(tmp_path):
    """An agent that calls the labeler beyond its RM's labels gets its generated controls in
    every cell, compared with it in the block; a rerun computes nothing."""
    argv = [ENV, "--x", "target_value=1.5", "--y", "rm_init_noise=0.05,0.3", "--agents"]
    argv += ["fpo-relaxed", "--seeds", "0-1", "--rounds", "30", "--jobs", "1", "--out"]
    argv += [str(tmp_path), "--name", "c", "--no-progress"]
    assert cmap.main(argv) == 0
    rows = results.read_csv(tmp_path / "c" / "c.csv")
    controls = {"naive@budget=fpo-relaxed", "oracle-values@budget=fpo-relaxed"}
    assert {r["agent"] for r in rows} == {"naive", "fpo-relaxed", *controls}
    calls = {(r["agent"], r["rm_init_noise"]): r["labeler_calls"] for r in rows}
    assert calls["naive@budget=fpo-relaxed", 0.3] == calls["fpo-relaxed", 0.3]
    assert calls["fpo-relaxed", 0.3] == 2 * calls["naive", 0.3]
    at = "(target_value=1.5, rm_init_noise=0.3)"
    text = (tmp_path / "c" / "c.md").read_text()
    assert f"| fpo-relaxed {at} | naive@budget=fpo-relaxed {at} | 2 / 2 |" in text
    assert f"| naive@budget=fpo-relaxed {at} | naive {at} | 2 / 2 |" in text
    assert json.loads((tmp_path / "c" / "c.json").read_text())["runs"] == 2 * 4 * 2
    assert cmap.main(argv) == 0
    assert json.loads((tmp_path / "c" / "c.json").read_text())["runs_computed_now"] == 0


def test_best_agent_needs_the_verdict_better():
    rows = [
        {"x": 1, "y": 1, "agent": a, "final_true_utility": u, "verdict": v}
        for a, u, v in [
            ("naive", 3.0, ""),
            ("a", 9.0, "no difference detected"),
            ("b", 5.0, "better"),
            ("d", 6.0, "better"),
            ("c", 1.0, "worse"),
        ]
    ]
    assert cmap.best_agent(rows, "x", "y") == {(1, 1): "d"}
    assert cmap.best_agent(rows, "x", "y", {"naive", "b"}) == {(1, 1): "b"}
    assert cmap.best_agent(rows, "x", "y", {"naive", "a", "c"}) == {(1, 1): "naive"}
    rows[2]["verdict"] = rows[3]["verdict"] = "no difference detected"
    assert cmap.best_agent(rows, "x", "y") == {(1, 1): "naive"}


def test_oracle_free_reads_the_declarations():
    assert cmap.oracle_free("naive") and cmap.oracle_free("kl") and cmap.oracle_free("ensemble")
    assert not cmap.oracle_free("oracle") and not cmap.oracle_free("fpo-relaxed")


def test_parse_axis_reads_numbers_and_strings():
    assert cmap.parse_axis("target_value=1,2.5", "--x") == ("target_value", [1, 2.5])
    assert cmap.parse_axis("feedback=rating,preference", "--y") == (
        "feedback",
        ["rating", "preference"],
    )


@pytest.mark.parametrize(
    "extra, flag",
    [
        (["--x", "target_value", "--y", "utility_width=0.1"], "--x"),
        (["--x", "target_value=1,1", "--y", "utility_width=0.1"], "--x"),
        (["--x", "no_such_knob=1", "--y", "utility_width=0.1"], "--x"),
        (["--x", "target_value=1", "--y", "utility_width=-0.1"], "--y"),
        (["--x", "target_value=1", "--y", "target_value=2"], "--y"),
        (["--x", "target_value=1", "--y", "utility_width=0.1", "--agents", "nope"], "--agents"),
        (["--x", "target_value=1", "--y", "utility_width=0.1", "--agents", "fpo,fpo"], "--agents"),
        (
            ["--x", "target_value=1", "--y", "utility_width=0.1", "--env-kwargs", "target_value=2"],
            "--x",
        ),
        (["--x", "target_value=1", "--y", "utility_width=0.1", "--jobs", "0"], "--jobs"),
        (["--x", "target_value=1", "--y", "utility_width=0.1", "--name", "a/b"], "--name"),
    ],
)
def test_bad_input_is_one_line_naming_the_flag(extra, flag, tmp_path, capsys):
    assert cmap.main([ENV, *extra, "--out", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and flag in err, err
    assert not list(tmp_path.rglob("summary.json"))


def test_unknown_env_is_refused(tmp_path, capsys):
    argv = ["NoSuchEnv-v0", "--x", "a=1", "--y", "b=2", "--out", str(tmp_path)]
    assert cmap.main(argv) == 2
    assert "env" in capsys.readouterr().err
