"""Leaderboard statistics and generation from real (short) runs."""

import json

import numpy as np
import pandas as pd
import pytest

from baselines import cli, leaderboard, results, stats
from baselines.run import main as run_main


def test_bootstrap_ci_brackets_the_mean_and_shrinks_with_n():
    rng = np.random.default_rng(0)
    small, large = rng.normal(5, 1, 10), rng.normal(5, 1, 1000)
    lo, hi = stats.bootstrap_ci(small)
    assert lo < small.mean() < hi
    lo2, hi2 = stats.bootstrap_ci(large)
    assert (hi2 - lo2) < (hi - lo) / 3
    assert lo2 < 5 < hi2


def test_iqm_ignores_outer_quartiles():
    x = np.array([-100.0, 1, 2, 3, 4, 5, 6, 1000])
    assert stats.iqm(x) == pytest.approx(np.mean([2, 3, 4, 5]))


def test_probability_of_improvement():
    assert stats.probability_of_improvement(np.array([2, 3]), np.array([0, 1])) == 1.0
    assert stats.probability_of_improvement(np.array([1]), np.array([1])) == 0.5


def test_summarise_history_collapse_metrics():
    s = results.summarise_history(np.array([1.0, 4.0, 2.0]))
    assert s["peak_true_utility"] == 4.0 and s["peak_round"] == 2
    assert s["collapse_drop"] == 2.0 and s["final_true_utility"] == 2.0
    assert s["auc_true_utility"] == pytest.approx(7 / 3)


def test_collapse_drop_is_unbiased_on_a_flat_noisy_curve():
    rng = np.random.default_rng(0)
    drops, raw = [], []
    for _ in range(200):
        flat = 5.0 + rng.normal(0.0, 1.0, size=1000)  # noise only: nothing collapses
        drops.append(results.summarise_history(flat)["collapse_drop"])
        raw.append(flat.max() - flat[-1])
    assert np.mean(raw) > 2.5  # the raw peak-minus-final would report a collapse
    assert abs(np.mean(drops)) < 3 * np.std(drops) / np.sqrt(len(drops))
    # a real rise and fall of 3 under the same noise is measured
    curve = np.concatenate([np.linspace(5, 8, 500), np.linspace(8, 5, 500)])
    s = results.summarise_history(curve + rng.normal(0.0, 1.0, size=1000))
    assert 2.4 < s["collapse_drop"] < 3.6 and 400 < s["peak_round"] < 600
    assert s["final_block_true_utility"] == pytest.approx(5.0, abs=0.5)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    for agent in ("naive", "fpo-relaxed"):
        assert (
            run_main(
                [
                    "--agent",
                    agent,
                    "--seeds",
                    "0-2",
                    "--rounds",
                    "60",
                    "--out",
                    str(out),
                    "--no-progress",
                ]
            )
            == 0
        )
    return out


def test_leaderboard_tables_and_figures(runs, tmp_path):
    site = tmp_path / "site"
    assert (
        leaderboard.main(["--runs", str(runs), "--results", str(tmp_path), "--site", str(site)])
        == 0
    )
    assert "fpo-relaxed" in (site / "index.html").read_text()  # the site of the same results
    tab = pd.read_csv(tmp_path / "leaderboard.csv")
    assert set(tab.agent) == {"naive", "fpo-relaxed"}
    assert (tab.seeds == 3).all()
    per_run = pd.read_csv(tmp_path / "runs.csv")
    for agent in ("naive", "fpo-relaxed"):
        finals = per_run[per_run.agent == agent].final_true_utility
        row = tab[tab.agent == agent].iloc[0]
        assert row.final_true_utility == pytest.approx(finals.mean(), rel=1e-5)
        assert (
            row.final_true_utility_ci_low
            <= row.final_true_utility
            <= row.final_true_utility_ci_high
        )
    md = (tmp_path / "LEADERBOARD.md").read_text()
    assert "| naive | current_rm | 3 |" in md
    assert "| fpo-relaxed | current_rm,labeler_values | 3 |" in md
    poi = pd.read_csv(tmp_path / "comparisons.csv")
    row = poi[(poi.a == "fpo-relaxed") & (poi.b == "naive")].iloc[0]
    x = per_run[per_run.agent == "fpo-relaxed"].final_block_true_utility.to_numpy()
    y = per_run[per_run.agent == "naive"].final_block_true_utility.to_numpy()
    assert row.p_improvement == pytest.approx(stats.probability_of_improvement(x, y), abs=1e-5)
    assert row.p_lo <= row.p_improvement <= row.p_hi
    assert row.difference == pytest.approx(x.mean() - y.mean(), abs=1e-5)
    assert row.difference_lo <= row.difference <= row.difference_hi
    assert row.verdict == stats.verdict(*(round(row[k], 2) for k in ("difference_lo",
                                          "difference_hi", "p_lo", "p_hi")))  # fmt: skip
    assert "| fpo-relaxed | naive |" in md
    assert (tmp_path / "figures" / "RLHFBlindSpot-v0_true_utility.png").stat().st_size > 1000
    assert (tmp_path / "figures" / "RLHFBlindSpot-v0_signal_noise.png").stat().st_size > 1000


def test_leaderboard_refuses_mixed_commits(runs, tmp_path, capsys):
    cfg_path = results.run_dir(runs, "RLHFBlindSpot-v0", "naive", 1) / "config.json"
    original = cfg_path.read_text()
    cfg = json.loads(original)
    cfg["code_hash"] = "0123456789abcdef"
    cfg_path.write_text(json.dumps(cfg))
    seal = cfg_path.parent / results.MANIFEST
    sealed = seal.read_text()
    results.write_manifest(cfg_path.parent, ["config.json", "metrics.csv", "summary.json"])
    try:
        assert leaderboard.main(["--runs", str(runs), "--results", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert "code versions" in err and "0123456789ab" in err
        assert not (tmp_path / "LEADERBOARD.md").exists()
        assert (
            leaderboard.main(["--runs", str(runs), "--results", str(tmp_path), "--allow-mixed"])
            == 0
        )
    finally:
        cfg_path.write_text(original)
        seal.write_text(sealed)


def test_leaderboard_with_no_runs_is_an_error(tmp_path, capsys):
    assert leaderboard.main(["--runs", str(tmp_path / "none"), "--results", str(tmp_path)]) == 2
    assert "no finished runs" in capsys.readouterr().err


def test_leaderboard_refuses_the_same_run_twice(runs, tmp_path, capsys):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(runs, copy / "a")
    shutil.copytree(runs, copy / "b")
    assert leaderboard.main(["--runs", str(copy), "--results", str(tmp_path / "r")]) == 2
    assert "more than one folder" in capsys.readouterr().err
    assert leaderboard.main(["--runs", str(copy / "a"), "--results", str(tmp_path / "r")]) == 0


def test_leaderboard_writes_committed_results_only_when_forced(runs, tmp_path, capsys, monkeypatch):
    committed = tmp_path / "repo" / "results"
    committed.mkdir(parents=True)
    (committed / "LEADERBOARD.md").write_text("the published table\n")
    monkeypatch.setattr(cli, "ROOT", tmp_path / "repo")
    for target in (committed, committed / "learnability"):
        assert leaderboard.main(["--runs", str(runs), "--results", str(target)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--force" in err
    assert (committed / "LEADERBOARD.md").read_text() == "the published table\n"
    # forced: rewritten, and the figures of envs no longer in the table are removed
    stale = committed / "figures" / "RLHFContextual-v0_true_utility.png"
    stale.parent.mkdir()
    stale.write_bytes(b"old")
    other = committed / "figures" / "hand_made.png"  # not one of the command's figures: kept
    other.write_bytes(b"mine")
    assert leaderboard.main(["--runs", str(runs), "--results", str(committed), "--force"]) == 0
    assert "fpo-relaxed" in (committed / "LEADERBOARD.md").read_text()
    assert not stale.exists() and other.exists()
    monkeypatch.chdir(tmp_path)  # the default goes to an untracked folder
    assert leaderboard.main(["--runs", str(runs)]) == 0
    assert (tmp_path / "leaderboard" / "LEADERBOARD.md").exists()


@pytest.mark.parametrize(
    "damage,needle",
    [
        (lambda f: (f / "summary.json").write_text('{"status": "ok", "env_id'), "JSONDecodeError"),
        (lambda f: (f / "summary.json").write_text(""), "JSONDecodeError"),
        (lambda f: (f / "config.json").unlink(), "FileNotFoundError"),
        (lambda f: (f / "metrics.csv").write_text("round,true_utility\n1,3.0\n"), "rounds"),
        (lambda f: (f / "metrics.csv").unlink(), "FileNotFoundError"),
        (lambda f: _edit_summary(f, final_true_utility=float("nan")), "not what metrics.csv gives"),
        (lambda f: _edit_summary(f, final_true_utility="3.0"), "not what metrics.csv gives"),
        (lambda f: _edit_summary(f, env_id="../../../ESCAPED"), "unknown env_id"),
        (lambda f: (f / "summary.json").write_text("[1, 2]"), "not a JSON object"),
    ],
)
@pytest.mark.parametrize("reseal", [False, True])
def test_damaged_runs_are_skipped_with_one_line_each(
    runs, tmp_path, capsys, damage, needle, reseal
):
    """Damage after sealing fails the manifest; damage sealed anew (a forged folder) still
    fails the content checks."""
    import shutil

    copy = tmp_path / "runs"
    shutil.copytree(runs, copy)
    folder = results.run_dir(copy, "RLHFBlindSpot-v0", "naive", 1)
    damage(folder)
    if reseal:
        names = ["config.json", "metrics.csv", "summary.json"]
        results.write_manifest(folder, [n for n in names if (folder / n).exists()])
    else:
        needle = "manifest" if needle != "FileNotFoundError" else "is missing"
    out = tmp_path / "res"
    assert leaderboard.main(["--runs", str(copy), "--results", str(out)]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(folder) in err[0] and needle in err[0], err
    row = pd.read_csv(out / "leaderboard.csv").set_index("agent").loc["naive"]
    assert row.seeds == 2  # the damaged run is not averaged in
    assert not list(tmp_path.parent.glob("ESCAPED*")) and not (tmp_path / "ESCAPED").exists()


def _edit_summary(folder, **changes):
    s = json.loads((folder / "summary.json").read_text())
    s.update(changes)
    (folder / "summary.json").write_text(json.dumps(s))


def test_tabulate_adds_the_published_runs_not_under_runs(runs, tmp_path):
    """--tabulate: the rows of a published runs.csv whose (env, agent) is not under --runs join
    the tables, their comparisons and runs.csv (another env, or another agent of the same env);
    the (env, agent) pairs under --runs come from the run folders."""
    assert leaderboard.main(["--runs", str(runs), "--results", str(tmp_path / "a")]) == 0
    published = pd.read_csv(tmp_path / "a" / "runs.csv")
    other = published.assign(env_id="RLHFNeuralBlindSpot-v0", final_block_true_utility=1.0)
    extra = published[published.run_name == "naive"].assign(
        run_name="naive@x", agent="naive@x", final_block_true_utility=-1.0
    )
    pd.concat([published.assign(final_block_true_utility=-1.0), other, extra]).to_csv(
        tmp_path / "published.csv", index=False
    )
    args = ["--runs", str(runs), "--results", str(tmp_path / "b")]
    tabulate = [*args, "--tabulate", str(tmp_path / "published.csv")]
    assert leaderboard.main(tabulate) == 2  # naive@x's versions are not the folders' ones
    assert leaderboard.main([*tabulate, "--allow-mixed"]) == 0
    tab = pd.read_csv(tmp_path / "b" / "leaderboard.csv").set_index(["env_id", "agent"])
    assert tab.final_block_true_utility["RLHFNeuralBlindSpot-v0", "naive"] == 1.0
    assert tab.final_block_true_utility["RLHFBlindSpot-v0", "naive"] > 0  # from the folders
    assert tab.final_block_true_utility["RLHFBlindSpot-v0", "naive@x"] == -1.0  # tabulated
    assert len(pd.read_csv(tmp_path / "b" / "runs.csv")) == 2 * len(published) + len(extra)
    assert "## RLHFNeuralBlindSpot-v0" in (tmp_path / "b" / "LEADERBOARD.md").read_text()
    for bad in (tmp_path / "missing.csv", tmp_path / "b" / "LEADERBOARD.md"):  # one-line errors
        assert leaderboard.main([*args, "--force", "--tabulate", str(bad)]) == 2


def test_a_comparison_added_to_the_table_changes_no_other_row(runs):
    df = results.load_runs([runs], metrics=True)
    naive = df[df.run_name == "naive"]
    df = pd.concat([df, naive.assign(run_name="ensemble")])  # a pair after the control's
    control = naive.assign(run_name="naive@budget=fpo-relaxed")
    before = leaderboard.comparisons(df, n_boot=200).set_index(["a", "b"])
    after = leaderboard.comparisons(pd.concat([df, control]), n_boot=200).set_index(["a", "b"])
    assert len(after) > len(before)
    pd.testing.assert_frame_equal(after.loc[before.index], before)
