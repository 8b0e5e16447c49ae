"""Fuzzing the commands: random CLI arguments, random sweep files and randomly damaged run
folders find only one-line errors, and never lose or change a finished run.

A fast slice runs by default; the same fuzzers run 500 examples each in the slow suite
(``pytest -m slow``).
"""

from __future__ import annotations

import contextlib
import io
import shutil
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from baselines import results, sweep
from baselines.run import main as run_main

LINEAR = "RLHFBlindSpot-v0"
# every fuzzed command carries these last, so a valid draw stays small
BOUNDS = ["--max-runs", "3", "--max-rounds", "3", "--no-progress"]


def call(fn, argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = fn(argv)
    return code, err.getvalue()


def assert_clean(code: int, err: str, allowed=(0, 1, 2)) -> None:
    assert code in allowed, (code, err)
    assert "Traceback" not in err, err
    if code == 2:
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and "error:" in lines[0], err


def tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def _finished(root: Path) -> Path:
    for agent in ("naive", "fpo"):
        args = ["--agent", agent, "--seeds", "0-1", "--rounds", "3", "--out", str(root)]
        assert run_main([*args, "--no-progress", "--quiet"]) == 0
    return root


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A folder with finished runs (naive and fpo, seeds 0-1, 3 rounds); fuzzed commands may
    add runs to it."""
    return _finished(tmp_path_factory.mktemp("finished"))


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """The same finished runs, never written to (copied before each damage)."""
    return _finished(tmp_path_factory.mktemp("pristine"))


# -- CLI arguments ------------------------------------------------------------------------------
TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
VALUES = {
    "--agent": st.sampled_from(
        ["naive", "fpo", "fpo-exact", "oracle", "kl", "bogus", "os:system", "agents:Agent", ""]
    )
    | TEXT,  # fmt: skip
    "--env": st.sampled_from(
        [LINEAR, "RLHFNeuralBlindSpot-v0", "RLHFVerbosity-v0", "CartPole-v1", "../x"]
    )
    | TEXT,  # fmt: skip
    "--seeds": st.sampled_from(
        ["0", "0-1", "1,0", "-1", "5-2", "0-99999999999", "0-100000", "", "a", "3,3", "2147483648"]
    )
    | TEXT,  # fmt: skip
    "--rounds": st.sampled_from(["1", "2", "3", "0", "-4", "1e9", "x", "999999999999"]),
    "--env-kwargs": st.lists(
        st.sampled_from(
            [
                "dims=3",
                "signal_dims=9",
                "label_noise=-1",
                "feedback=x",
                "foo=1",
                "rm_lr=nan",
                "rm_lr=1e300",
                "feedback=preference",
                "=1",
                "dims",
                "samples_per_round=0",
                "utility_width=inf",
            ]
        ),
        max_size=3,
    ),  # fmt: skip
    "--agent-kwargs": st.lists(
        st.sampled_from(
            [
                "fpo_gamma=nan",
                "policy_lr=0.1",
                "rounds=2",
                "rounds=1000000000",
                "x=1",
                "inner_steps=-1",
                "gamma=0.1",
                "fpo_gamma=-5",
            ]
        ),
        max_size=3,
    ),  # fmt: skip
    "--policy-optimizer": st.sampled_from(["whitebox", "ppo", "a2c", "sac", "dqn", ""]),
    "--sb3-kwargs": st.lists(
        st.sampled_from(["n_steps=8", "batch_size=8", "bogus=1", "learning_rate=x"]), max_size=2
    ),  # fmt: skip
    "--jobs": st.sampled_from(["1", "2", "0", "-1", "x"]),
    "--batch-size": st.sampled_from(["1", "5", "0", "x"]),
    "--from": st.sampled_from(["/nonexistent/config.json", "/dev/null", "pyproject.toml"]),
}


@st.composite
def argvs(draw, out: str, a_file: str):
    argv: list[str] = []
    for flag in draw(st.lists(st.sampled_from(sorted(VALUES)), max_size=6, unique=True)):
        value = draw(VALUES[flag])
        argv += [flag, *value] if isinstance(value, list) else [flag, value]
    argv += ["--out", draw(st.sampled_from([out, out, a_file]))]
    return argv + BOUNDS


def _cli_fuzz(finished: Path, data) -> None:
    before = tree(finished)
    a_file = str(finished / LINEAR / "naive" / "seed_0" / "summary.json")
    argv = data.draw(argvs(str(finished), a_file))
    assert_clean(*call(run_main, argv))
    assert tree(finished) == before or _only_new_runs(before, tree(finished))


def _only_new_runs(before: dict, after: dict) -> bool:
    """Valid draws may add run folders; none of the finished ones may change."""
    return all(after.get(k) == v for k, v in before.items())


_FAST = settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
_SLOW = settings(max_examples=500, deadline=None, suppress_health_check=list(HealthCheck))


# -- sweep files --------------------------------------------------------------------------------
LEAF = st.none() | st.booleans() | st.integers(-3, 5) | st.floats(allow_nan=True) | TEXT
JUNK = st.recursive(LEAF, lambda c: st.lists(c, max_size=3) | st.dictionaries(TEXT, c, max_size=3),
                    max_leaves=6)  # fmt: skip
SWEEP_VALUES = {
    "envs": st.sampled_from([[LINEAR], [LINEAR, LINEAR], ["nope"], [], LINEAR]) | JUNK,
    "agents": st.sampled_from(
        [
            ["naive"],
            ["naive", "naive"],
            [{"agent": "naive", "tag": "t"}],
            [{"agent": "naive", "bad": 1}],
            ["bogus"],
            [3],
        ]
    )
    | JUNK,  # fmt: skip
    "seeds": st.sampled_from(["0", "0-1", [0, 1], [], "0-9", "x", -1]) | JUNK,
    "rounds": st.sampled_from([1, 2, 0, -1, "2", True, 10**9]) | JUNK,
    "env_kwargs": st.sampled_from([{}, {"label_noise": 0.1}, {"dims": -1}, []]) | JUNK,
    "agent_kwargs": st.sampled_from([{}, {"policy_lr": 0.1}, {"zz": 1}]) | JUNK,
    "grid": st.sampled_from(
        [
            {},
            {"env.label_noise": [0.0, 0.1]},
            {"agent.fpo_gamma": []},
            {"x.y": [1]},
            {"env.label_noise": [0.1, 0.1]},
        ]
    )
    | JUNK,  # fmt: skip
    "subdir": st.sampled_from(["a", "../../escape", "/abs", ""]) | JUNK,
    "batch_size": st.sampled_from([1, 0, "zero", 10]) | JUNK,
    "policy_optimizers": st.sampled_from([["whitebox"], ["ppo"], ["dqn"], "whitebox"]) | JUNK,
    "unknown_key": JUNK,
}


def _sweep_fuzz(finished: Path, data) -> None:
    before = tree(finished)
    keys = data.draw(st.lists(st.sampled_from(sorted(SWEEP_VALUES)), max_size=8, unique=True))
    spec = {k: data.draw(SWEEP_VALUES[k]) for k in keys}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sweep.yaml"
        if data.draw(st.booleans()):
            path.write_text(yaml.safe_dump(spec))
        else:  # raw text: broken YAML, a scalar, a list
            path.write_text(data.draw(st.sampled_from(["envs: [", "- a", "3", "{", ""]) | TEXT))
        argv = [str(path), "--out", str(finished), "--jobs", "1", "--quiet", *BOUNDS]
        assert_clean(*call(sweep.main, argv))
    assert _only_new_runs(before, tree(finished))
    assert not (finished.parent / "escape").exists()


# -- damaged run folders ------------------------------------------------------------------------
DAMAGE = st.sampled_from(["delete", "truncate", "garbage", "append", "json", "empty", "rmdir"])


def _damage(folder: Path, file: Path, how: str, data) -> None:
    if how == "rmdir":
        shutil.rmtree(folder)
    elif how == "delete":
        file.unlink()
    elif how == "truncate":
        raw = file.read_bytes()
        file.write_bytes(raw[: data.draw(st.integers(0, max(0, len(raw) - 1)))])
    elif how == "garbage":
        file.write_bytes(data.draw(st.binary(min_size=1, max_size=40)))
    elif how == "append":
        file.write_bytes(file.read_bytes() + data.draw(st.binary(min_size=1, max_size=10)))
    elif how == "json":
        file.write_text(yaml.safe_dump(data.draw(JUNK)))
    else:
        file.write_bytes(b"")


def _damage_fuzz(finished: Path, data) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(tmp) / "runs"
        shutil.copytree(finished, runs)
        original = tree(runs)
        folders = sorted(p.parent for p in runs.rglob("seed_*/config.json"))
        damaged = set()
        for _ in range(data.draw(st.integers(1, 3))):
            folder = data.draw(st.sampled_from(folders))
            if not folder.exists():
                continue
            files = sorted(p for p in folder.iterdir() if p.is_file() and p.name != ".lock")
            if not files:
                continue
            _damage(folder, data.draw(st.sampled_from(files)), data.draw(DAMAGE), data)
            damaged.add(folder)
        # the run-folder reader skips damaged folders with one line each, no traceback
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            df = results.load_runs([runs], metrics=True)
        assert "Traceback" not in err.getvalue()
        skipped = [line for line in err.getvalue().splitlines() if line.startswith("skipping")]
        assert len(skipped) == len(set(skipped)) <= len(damaged)
        assert len(df) + len(skipped) <= len(folders)
        # rerunning the same commands restores every damaged run exactly; sound ones untouched
        for agent in ("naive", "fpo"):
            argv = ["--agent", agent, "--seeds", "0-1", "--rounds", "3", "--out", str(runs)]
            assert_clean(*call(run_main, [*argv, "--quiet", *BOUNDS]), allowed=(0,))
        after = tree(runs)
        for name, content in original.items():
            folder = runs / Path(name).parent
            if folder not in damaged or name.endswith("metrics.csv"):
                assert after.get(name) == content, name
        assert all(results.verify(f) == "" for f in folders)


# -- the tests: each fuzzer and the folder it works on; 500 draws each in the slow suite -------
FUZZERS = {
    "cli": (_cli_fuzz, "finished"),
    "sweep_file": (_sweep_fuzz, "finished"),
    "damaged_folder": (_damage_fuzz, "pristine"),
}


def _fuzz(fuzzer: str, request, data) -> None:
    fn, folder = FUZZERS[fuzzer]
    fn(request.getfixturevalue(folder), data)


each = pytest.mark.parametrize("fuzzer", FUZZERS)
test_fuzz = each(_FAST(given(data=st.data())(_fuzz)))
test_fuzz_500 = pytest.mark.slow(each(_SLOW(given(data=st.data())(_fuzz))))
