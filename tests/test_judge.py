"""The judge and the judged, tried as an adversary would: plugin agents run through the harness.

Every plugin here (``jp:Class``, ``forger:Forger``; their source is below, written to a temporary
folder on ``PYTHONPATH``) declares ``reads = ("current_rm",)`` and tries one route to the truth,
the labeler or the record: attributes and reflection on the view it gets, pickling, ``gc``, call
frames, a ``TorchFunctionMode`` left on, the oracle's closure cells and globals, the judge's
connection itself, monkeypatching the harness's record code at import, rebuilding the env from
what it was told, writing into the memory behind the tensors it was sent, malformed plays, and
names that are not its own. A plugin that plays naive's policy must be recorded with naive's
numbers byte for byte, charged nothing, and leave naive's numbers in a shared batch as they are
alone; one that asks for what it did not declare or breaks the protocol fails or stops its own run
with one line. The env runs with ``target_value`` = :data:`HIDDEN` (not its default), a setting
no agent is told; the plugins log what they found to ``$JUDGE_TEST_LOG``.

All programs run once, side by side, in one module fixture (a few subprocesses of
``baselines.sweep`` / ``baselines.run``).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from baselines import results
from baselines.plan import load_defaults

REPO = Path(__file__).resolve().parents[1]
ENV = "RLHFNeuralBlindSpot-v0"
HIDDEN = 2.2718  # the env's target_value here (no env's default: linear 2.0, neural 2.5)
ROUNDS = 3
SEEDS = [0, 1]
#: the env's settings of the truth and the labeler (an agent must not be told them)
TRUTH_SETTINGS = {
    "signal_dims",
    "target_value",
    "utility_width",
    "utility_scale",
    "label_noise",
    "labeler_bias",
    "labeler_bias_dims",
    "temperature",
}
COUNTERS = (
    "labeler_value_queries",
    "labeler_grad_queries",
    "truth_value_queries",
    "truth_grad_queries",
    "oracle_queries",
    "oracle_grad_queries",
    "oracle_value_equivalents",
)
#: plugins that play naive's policy while they hunt (jp:Reflector: the view, pickling, frames,
#: the oracle's closure and globals, the memory behind its tensors; each class alone works too)
HUNTERS = {
    "jp:Reflector": "reflector",
    "jp:GcHunter": "gc-hunter",
    "jp:Rebuilder": "rebuilder",
    "forger:Forger": "forger",
}
BROKEN = {
    "jp:WrongShape": "wrong-shape",
    "jp:NaNPlay": "nan-play",
    "jp:HugeMean": "huge-mean",
    "jp:HugeResponses": "huge-responses",
    "jp:Float32Play": "float32-play",
    "jp:Garbage": "garbage",
}
UNDECLARED = {"jp:Undeclared": "undeclared", "jp:RawQuery": "raw-query"}
#: the env's generic agent settings (its YAML ``agent:`` section), given to every agent explicitly
AGENT_KWARGS = load_defaults(ENV)["agent"]
#: one sweep each (all of a sweep's agents share one batched program while none fails); "broken"
#: runs without AGENT_KWARGS (the harness gives them from the env's YAML)
PROGRAMS = {
    "hunters": ["naive", *HUNTERS],
    "tamper": ["naive", "jp:Tamper"],
    "undeclared": ["naive", *UNDECLARED],
    "broken": ["naive", *BROKEN],
    "names": ["jp:Impostor", "jp:Escaper"],
}
#: SB3 runs (PPO on the verbosity env), one sweep
SB3_ENV = "RLHFVerbosity-v0"
SB3 = {"jp:ResetDodge": "reset-dodge", "jp:RMSetter": "rm-setter"}

#: the plugins' module jp.py
PLUGINS = r'''"""Adversarial plugin agents for tests/test_judge.py (written to a temporary folder and loaded by the
harness as ``jp:Class``; this file is only their source text, never imported by the tests).

Every plugin declares ``reads = ("current_rm",)`` and, unless it breaks the protocol on purpose,
plays exactly as naive (its score and gradient are naive's), so its recorded numbers must be
naive's. Each tries one route to the truth, the labeler or the record and writes what it found to
``$JUDGE_TEST_LOG/<name>.jsonl`` (evidence for the test; a route that worked also changes what the
plugin plays, so the record shows it too).
"""

import copy
import gc
import inspect
import json
import os
import pickle
import sys

import torch

from agents.naive import NaiveAgent

LOG = os.environ.get("JUDGE_TEST_LOG", "")
HIDDEN = float(os.environ.get("JUDGE_TEST_HIDDEN", "nan"))  # the env's non-default target_value
TRUTH_TYPES = ("RLHFCore", "FollowerConfig", "BlindSpotConfig", "Env", "VectorEnv")
TRUTH_KEYS = ("target_value", "y_star", "utility_width", "signal_dims", "label_noise")


def log(name, **found):
    if LOG:
        with open(os.path.join(LOG, f"{name}.jsonl"), "a") as f:
            f.write(json.dumps(found, default=repr) + "\n")


def truth_like(obj):
    """A description of ``obj`` if it is (or holds at its top level) the env or its truth."""
    try:
        if isinstance(obj, type):
            return None
        names = {c.__name__ for c in type(obj).__mro__}
        if names & set(TRUTH_TYPES):
            return type(obj).__name__
        d = obj if isinstance(obj, dict) else getattr(obj, "__dict__", None)
        if isinstance(d, dict):
            for k in TRUTH_KEYS:
                if k in d and not callable(d[k]):
                    v = d[k]
                    if isinstance(v, torch.Tensor) or v == HIDDEN:
                        return f"{type(obj).__name__}[{k}]={v!r}"
        if isinstance(obj, torch.Tensor) and obj.dim() == 1 and obj.numel() >= 2:
            if obj.dtype.is_floating_point and bool((obj == HIDDEN).any()):
                return f"tensor with the hidden value {obj.tolist()}"
    except Exception:  # noqa: BLE001  (odd objects: skip)
        return None
    return None


def explore(roots, depth=5, limit=20000):
    """Everything reachable from ``roots`` by attributes, closures, globals, containers and
    ``__reduce_ex__``; the truth-like objects found."""
    seen, found, frontier = set(), [], list(roots)
    for _ in range(depth):
        nxt = []
        for obj in frontier:
            if id(obj) in seen or len(seen) > limit:
                continue
            seen.add(id(obj))
            what = truth_like(obj)
            if what:
                found.append(what)
            kids = []
            if isinstance(obj, dict):
                kids += list(obj.values())
            elif isinstance(obj, (list, tuple, set, frozenset)):
                kids += list(obj)
            for attr in ("__dict__", "__closure__", "__self__", "__func__", "__wrapped__"):
                try:
                    kids.append(object.__getattribute__(obj, attr))
                except Exception:  # noqa: BLE001
                    pass
            if callable(obj) and hasattr(obj, "__globals__"):
                kids.append(obj.__globals__)
            if type(obj).__name__ == "cell":
                try:
                    kids.append(obj.cell_contents)
                except ValueError:
                    pass
            for slot in getattr(type(obj), "__slots__", ()):
                try:
                    kids.append(object.__getattribute__(obj, slot))
                except Exception:  # noqa: BLE001
                    pass
            try:
                kids += [k for k in obj.__reduce_ex__(2)[1:] if k is not None]
            except Exception:  # noqa: BLE001
                pass
            nxt += kids
        frontier = nxt
    return found


class Hunter(NaiveAgent):
    """Naive's play; subclasses hunt in :meth:`hunt` (once, in start) and log what they found."""

    name = "hunter"
    role = "method"
    reads = ("current_rm",)
    llm_penalty = None
    paper_reference = {}

    def start(self, core):
        self.found = self.hunt(core)
        log(self.name, found=self.found)

    def hunt(self, core):
        return []


class ViewTruth(Hunter):
    """Reads the truth off the view it gets: attributes, object.__getattribute__, pickling."""

    name = "view-truth"

    def hunt(self, core):
        found = []
        for attr in ("utility", "utility_and_grad", "labeler_target", "labeler_utility", "y_star",
                     "labeler_direction", "queries", "core", "env"):
            for get in (getattr, object.__getattribute__):
                try:
                    found.append(f"{get.__name__}(core, {attr!r}) = {get(core, attr)!r}"[:200])
                except Exception:  # noqa: BLE001
                    pass
        for attr in ("signal_dims", "target_value", "utility_width", "label_noise",
                     "labeler_bias", "utility_scale", "temperature"):
            if hasattr(core.config, attr):
                found.append(f"core.config.{attr}")
        found += explore([core, vars(core), core.__reduce_ex__(2)])
        found += explore([pickle.loads(pickle.dumps(vars(core))), copy.deepcopy(core)])
        log(self.name, config=sorted(vars(core.config)), state=sorted(vars(core)))
        return found


class StorageSpy(Hunter):
    """Measures the memory behind the tensors it was sent: only its own rows should be there."""

    name = "storage-spy"

    def hunt(self, core):
        sizes = {}
        for k, v in core.params.items():
            sizes[k] = [v.numel(), v.untyped_storage().nbytes() // v.element_size(), v.is_shared()]
        log(self.name, sizes=sizes, S=core.S)
        return []


class GcHunter(Hunter):
    """Searches every object of its process (gc), their referrers, and intercepts every torch
    call of its process with a TorchFunctionMode left on."""

    name = "gc-hunter"

    def hunt(self, core):
        found = [w for o in gc.get_objects() if (w := truth_like(o))]
        found += [w for o in gc.get_referrers(core) if (w := truth_like(o))]
        found += [w for o in gc.get_referents(core) if (w := truth_like(o))]
        found += explore([sys.modules], depth=3)
        from torch.overrides import TorchFunctionMode

        hunter = self

        class Spy(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                for a in args:
                    w = truth_like(a)
                    if w:
                        log(hunter.name, mode=w)
                return func(*args, **(kwargs or {}))

        self.mode = Spy()
        self.mode.__enter__()  # left on for the whole run
        return found


class FrameHunter(Hunter):
    """Walks the call stack (inspect.stack and f_back) and every frame's locals and globals."""

    name = "frame-hunter"

    def hunt(self, core):
        return self.walk()

    def walk(self):
        found, frame = [], inspect.currentframe()
        while frame is not None:
            found += explore([dict(frame.f_locals)], depth=3)
            found += explore([frame.f_globals], depth=2)
            frame = frame.f_back
        for info in inspect.stack():
            found += explore([dict(info.frame.f_locals)], depth=2)
        return found

    def score_grad(self, core, y, oracle):  # what the white-box policy calls
        if not getattr(self, "walked", False):  # once: from inside a round
            self.walked = True
            log(self.name, in_score=self.walk() + explore([oracle, oracle._ask, oracle.__dict__]))
        return super().score_grad(core, y, oracle)


class ClosureHunter(Hunter):
    """Opens the oracle: its slots, its function's closure cells and globals, its connection."""

    name = "closure-hunter"

    def score_grad(self, core, y, oracle):
        if not getattr(self, "opened", False):
            self.opened = True
            ask = object.__getattribute__(oracle, "_ask")
            cells = [c.cell_contents for c in (ask.__closure__ or ())]
            found = explore([oracle, ask, cells, ask.__globals__], depth=6)
            log(self.name, cells=[type(c).__name__ for c in cells], found=found)
        return super().score_grad(core, y, oracle)


class Reflector(ViewTruth, FrameHunter, ClosureHunter, StorageSpy):
    """The view's, the frames', the oracle's and the storage's routes in one process (one seat)."""

    name = "reflector"

    def hunt(self, core):
        found = [f"view: {w}" for w in ViewTruth.hunt(self, core)]
        found += [f"frames: {w}" for w in FrameHunter.hunt(self, core)]
        return found + StorageSpy.hunt(self, core)


class Rebuilder(Hunter):
    """Rebuilds the env from what it can see (RM settings, seeds) and would query that twin."""

    name = "rebuilder"

    def hunt(self, core):
        import gymnasium as gym

        import rlhf_envs  # noqa: F401

        seen = dict(vars(core.config))
        kwargs = {k: v for k, v in seen.items() if k not in ("dims",)}
        twin = gym.make_vec("RLHFNeuralBlindSpot-v0", num_envs=core.S,
                            vectorization_mode="vector_entry_point", **kwargs)
        twin.reset(seed=list(core.seeds))
        t = twin.unwrapped.core
        log(self.name, config=seen, twin_target=float(t.config.target_value),
            twin_initial_rm_equal=all(torch.equal(t.params[k], core.params[k]) for k in t.params))
        return []


class Undeclared(Hunter):
    """Calls the truth through the oracle without declaring it."""

    name = "undeclared"

    def score_grad(self, core, y, oracle):
        oracle.true_utility(y.detach())
        return super().score_grad(core, y, oracle)


class RawQuery(Hunter):
    """Sends a truth-gradient query over the judge's connection itself, past the Oracle."""

    name = "raw-query"

    def score_grad(self, core, y, oracle):
        from baselines import judge

        (conn,) = [c.cell_contents for c in oracle._ask.__closure__ if hasattr(c.cell_contents,
                                                                           "send_bytes")]
        out = judge._ask(conn, "truth_grads", y.detach())
        log(self.name, answer=repr(out)[:200])
        return super().score_grad(core, y, oracle)


class Tamper(Hunter):
    """Writes zeros into the whole memory behind the reward-model parameters it was sent."""

    name = "tamper"

    def score_grad(self, core, y, oracle):
        for v in core.params.values():
            st = v.untyped_storage()
            whole = torch.empty(0, dtype=v.dtype).set_(st, 0, (st.nbytes() // v.element_size(),))
            whole.zero_()
        return super().score_grad(core, y, oracle)


def _patch_play(agent, change):
    """Make this process's Player submit ``change(theta, y)`` (its own process only)."""
    import agents.whitebox as wb

    plain = wb.Player.play

    def play(self, t, T, state):
        theta, y = plain(self, t, T, state)
        return change(theta, y) if t >= 1 else (theta, y)

    wb.Player.play = play


class WrongShape(Hunter):
    name = "wrong-shape"

    def hunt(self, core):
        _patch_play(self, lambda th, y: (th, torch.cat([y, y[..., :1]], -1)))
        return []


class NaNPlay(Hunter):
    name = "nan-play"

    def hunt(self, core):
        _patch_play(self, lambda th, y: (th, y * float("nan")))
        return []


class HugeMean(Hunter):
    name = "huge-mean"

    def hunt(self, core):
        _patch_play(self, lambda th, y: (torch.full_like(th, 1e300), y))
        return []


class HugeResponses(Hunter):
    name = "huge-responses"

    def hunt(self, core):
        _patch_play(self, lambda th, y: (th, torch.full_like(y, 1e300)))
        return []


class Float32Play(Hunter):
    name = "float32-play"

    def hunt(self, core):
        _patch_play(self, lambda th, y: (th.float(), y.float()))
        return []


class Garbage(Hunter):
    """Sends bytes that are not a message in place of its play."""

    name = "garbage"

    def hunt(self, core):
        import agents.whitebox as wb
        from baselines import judge

        plain_send = judge.send

        def send(conn, op, meta=None, arrays=()):
            if op == "played":
                conn.send_bytes(b"\x80\x04not json at all")
                return
            plain_send(conn, op, meta, arrays)

        judge.send = send
        return [] if wb else []


class ResetDodge(NaiveAgent):
    """Under SB3: declares and pays for truth values, then resets the judge's env with a seed of
    its own choosing in the middle of the run (its env link is the oracle it is handed)."""

    name = "reset-dodge"
    role = "method"
    reads = ("current_rm", "truth_values")
    llm_penalty = None

    def sb3_score(self, core, y, oracle):
        self.asked = getattr(self, "asked", 0) + 1
        oracle.true_utility(y.detach())  # one truth value query, charged
        log(self.name, asked=self.asked)
        if self.asked == 3:
            log(self.name, reset_with_seed=12345)  # before: a refused reset does not return
            oracle.reset(seed=12345)
        return super().sb3_score(core, y, oracle)


class RMSetter(NaiveAgent):
    """Under SB3: writes into the reward model object it was sent (its initial mean), then resets
    the judge's env, whose RM would restart from that mean if the memory were the judge's."""

    name = "rm-setter"
    role = "method"
    llm_penalty = None

    def start(self, core):
        if getattr(self, "before", None) is None:
            self.before = {k: v.flatten()[:4].tolist() for k, v in core.params.items()}
            for attr in ("_init_mean64", "init_mean", "skip_init"):
                t = getattr(core.reward_model, attr, None)
                if isinstance(t, torch.Tensor):
                    t.fill_(7.0)

    def sb3_score(self, core, y, oracle):
        if not getattr(self, "reset_done", False):
            self.reset_done = True
            oracle.reset(seed=0)  # the run's own seed
            state = getattr(oracle, "_state", None) or {}
            after = {k: torch.as_tensor(v).flatten()[:4].tolist()
                     for k, v in state.get("params", {}).items()}
            log(self.name, before=self.before, after=after)
        return super().sb3_score(core, y, oracle)


class Impostor(Hunter):
    """Claims a built-in agent's name (after removing the check from its own process)."""

    name = "naive"


class Escaper(Hunter):
    """Claims a name that leads out of the output folder."""

    name = "../../escaped"


# the registry's two name checks run in the plugin's own process: defeat them there
import agents.registry as _registry  # noqa: E402

_registry.BUILTIN = {k: v for k, v in _registry.BUILTIN.items() if k != "naive"}


class _Sly(str):
    def __contains__(self, part):
        return False


Escaper.name = _Sly("../../escaped")
'''

#: forger.py: its import-time code rewrites the harness's record code (in its own process)
FORGER = r'''import numpy as np

import agents.whitebox as wb
from agents.naive import NaiveAgent
from baselines import execute, results

_metrics = wb.round_metrics


def round_metrics(*args, **kwargs):
    row = _metrics(*args, **kwargs)
    row["true_utility"] = np.full_like(row["true_utility"], 9.99)
    return row


def write_run(job, seed, *args, **kwargs):
    raise SystemExit("the forger's write_run ran")


wb.round_metrics = round_metrics
wb.Seat.record = lambda self, row: None
results.write_run = write_run
results.metrics_csv = lambda *a, **k: "forged"
execute._run_white_box = lambda *a, **k: {}


class Forger(NaiveAgent):
    """Naive's play; at import and at start it rewrites the record's code in its process."""

    name = "forger"
    role = "method"
    llm_penalty = None

    def start(self, core):
        wb.round_metrics = round_metrics
        results.write_run = write_run

    def learn(self, env, rounds=None, callback=None):
        raise SystemExit("the forger's learn ran")
'''


class Arena(dict):
    def __repr__(self) -> str:  # short in failure reports
        return f"<arena {self['root']}>"


def _launch(root: Path, env: dict, name: str, args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", *args, "--out", str(root / name), "--no-progress", "--quiet"],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.fixture(scope="module")
def arena(tmp_path_factory):
    """Every program of :data:`PROGRAMS` (a sweep each) and naive alone, run side by side;
    ``{name: (output folder, exit code, output)}`` and the plugins' logs."""
    root = tmp_path_factory.mktemp("judge")
    plug, logs = root / "plugins", root / "logs"
    plug.mkdir()
    logs.mkdir()
    (plug / "jp.py").write_text(PLUGINS)
    (plug / "forger.py").write_text(FORGER)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(plug), str(REPO)]),
        "JUDGE_TEST_LOG": str(logs),
        "JUDGE_TEST_HIDDEN": str(HIDDEN),
    }
    procs = {}
    for name, agents in PROGRAMS.items():
        spec = root / f"{name}.yaml"
        kwargs = {} if name == "broken" else AGENT_KWARGS
        spec.write_text(
            f"envs: [{ENV}]\nagents: {json.dumps(agents)}\nseeds: {json.dumps(SEEDS)}\n"
            f"rounds: {ROUNDS}\nenv_kwargs: {{target_value: {HIDDEN}}}\n"
            f"agent_kwargs: {json.dumps(kwargs)}\n"
        )
        procs[name] = _launch(root, env, name, ["baselines.sweep", str(spec), "--jobs", "1"])
    spec = root / "sb3.yaml"
    spec.write_text(
        f"envs: [{SB3_ENV}]\nagents: {json.dumps(list(SB3))}\nseeds: [0]\nrounds: {ROUNDS}\n"
        "policy_optimizers: [ppo]\n"
    )
    procs["sb3"] = _launch(root, env, "sb3", ["baselines.sweep", str(spec), "--jobs", "1"])
    procs["alone"] = _launch(
        root,
        env,
        "alone",
        ["baselines.run", "--agent", "naive", "--env", ENV, "--rounds", str(ROUNDS)]
        + ["--seeds", ",".join(map(str, SEEDS)), "--env-kwargs", f"target_value={HIDDEN}"]
        + ["--agent-kwargs", *(f"{k}={json.dumps(v)}" for k, v in AGENT_KWARGS.items())],
    )
    out = {}
    for name, proc in procs.items():
        text, _ = proc.communicate(timeout=600)
        out[name] = (root / name, proc.returncode, text)
    return Arena(root=root, logs=logs, runs=out)


def folder(arena, program: str, name: str, seed: int) -> Path:
    return results.run_dir(arena["runs"][program][0], ENV, name, seed)


def summary(arena, program: str, name: str, seed: int) -> dict:
    return json.loads((folder(arena, program, name, seed) / "summary.json").read_text())


def metrics(arena, program: str, name: str, seed: int) -> bytes:
    return (folder(arena, program, name, seed) / "metrics.csv").read_bytes()


def found(arena, name: str) -> list[dict]:
    path = arena["logs"] / f"{name}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_naive_alone_is_the_reference(arena):
    _, code, text = arena["runs"]["alone"]
    assert code == 0, text
    for seed in SEEDS:
        s = summary(arena, "alone", "naive", seed)
        assert s["status"] == "ok" and s["rounds"] == ROUNDS
        assert all(s[c] == 0 for c in ("oracle_queries", "oracle_grad_queries"))


def test_the_hunters_shared_one_batched_program_with_naive(arena):
    _, code, text = arena["runs"]["hunters"]
    assert code == 0, text
    cfg = json.loads((folder(arena, "hunters", "naive", 0) / "config.json").read_text())
    assert sorted(cfg["batched_with_agents"]) == sorted(["naive", *HUNTERS.values()])


@pytest.mark.parametrize("program", ["hunters", "undeclared", "broken"])
def test_naive_in_a_batch_with_adversaries_gets_its_numbers_alone(arena, program):
    for seed in SEEDS:
        assert summary(arena, program, "naive", seed)["status"] == "ok"
        assert metrics(arena, program, "naive", seed) == metrics(arena, "alone", "naive", seed)


@pytest.mark.parametrize("name", list(HUNTERS.values()))
def test_a_hunter_playing_naive_is_recorded_as_naive_and_charged_nothing(arena, name):
    for seed in SEEDS:
        s = summary(arena, "hunters", name, seed)
        assert s["status"] == "ok", s.get("reason")
        assert s["reads"] == "current_rm"
        assert {c: s.get(c, 0) for c in COUNTERS} == dict.fromkeys(COUNTERS, 0)
        assert s["labeler_calls"] == s["labels_used"]
        csv = results.read_metrics(folder(arena, "hunters", name, seed) / "metrics.csv")
        assert all((csv[c] == 0).all() for c in COUNTERS)
        # the same bytes as naive alone: nothing the plugin did reached its own record
        assert metrics(arena, "hunters", name, seed) == metrics(arena, "alone", "naive", seed)


@pytest.mark.parametrize("name", ["reflector", "gc-hunter"])
def test_no_route_from_the_agents_process_reaches_the_env_or_its_truth(arena, name):
    logs = found(arena, name)
    ran = {"reflector": {"found", "config", "sizes", "in_score", "cells"}, "gc-hunter": {"found"}}
    assert ran[name] <= {key for entry in logs for key in entry}, f"{name}: a route did not run"
    hits = [
        hit
        for entry in logs
        for key, v in entry.items()
        if key in ("found", "in_score", "mode")  # what it found (the rest: names it saw)
        for hit in (v if isinstance(v, list) else [v])
    ]
    assert hits == [], hits


def test_the_agent_is_told_no_setting_of_the_truth_or_the_labeler(arena):
    (seen,) = [e for e in found(arena, "rebuilder") if "config" in e]
    assert not TRUTH_SETTINGS & set(seen["config"]), sorted(TRUTH_SETTINGS & set(seen["config"]))
    # rebuilt from what it was told, the twin has the env's public default, not this run's truth
    assert seen["twin_target"] != HIDDEN
    view = [e for e in found(arena, "reflector") if "config" in e]
    assert view and not TRUTH_SETTINGS & set(view[0]["config"])


def test_an_agent_is_sent_only_its_own_experiments_rows(arena):
    (seen,) = [e for e in found(arena, "reflector") if "sizes" in e]
    assert seen["S"] == len(SEEDS)
    # the memory behind each tensor it got holds its rows only, and is not shared with the judge
    spread = {k: v for k, v in seen["sizes"].items() if v[1] != v[0] or v[2]}
    assert spread == {}, f"[numel, numel of the storage behind it, is_shared]: {spread}"


def test_an_agent_cannot_write_into_the_judges_memory(arena):
    _, code, text = arena["runs"]["tamper"]
    for seed in SEEDS:
        # the tamperer zeroed every byte behind the RM parameters it was sent (its own copy:
        # its own play changes; the judge's follower, and so naive's record, does not)
        assert metrics(arena, "tamper", "naive", seed) == metrics(arena, "alone", "naive", seed)


@pytest.mark.parametrize(
    "name,needle",
    [
        ("undeclared", "'truth_values' in the agent's reads"),
        ("raw-query", "'truth_grads' in the agent's reads"),
    ],
)
def test_an_undeclared_query_fails_its_run_with_one_line_naming_the_declaration(
    arena, name, needle
):
    _, code, text = arena["runs"]["undeclared"]
    assert code == 1
    for seed in SEEDS:
        s = summary(arena, "undeclared", name, seed)
        assert s["status"] == "failed" and needle in s["reason"], s["reason"]
        assert "\n" not in s["reason"] and len(s["reason"]) < 300
        assert not (folder(arena, "undeclared", name, seed) / "metrics.csv").exists() or not any(
            results.read_metrics(folder(arena, "undeclared", name, seed) / "metrics.csv")[
                "truth_value_queries"
            ]
        )


@pytest.mark.parametrize("name", list(BROKEN.values()))
def test_a_malformed_play_fails_or_stops_its_own_run_with_one_line(arena, name):
    _, code, text = arena["runs"]["broken"]
    assert code == 1
    for seed in SEEDS:
        s = summary(arena, "broken", name, seed)
        assert s["status"] in ("failed", "stopped"), (s["status"], s.get("reason"))
        reason = s["reason"]
        assert reason and "\n" not in reason and len(reason) < 300, reason


def test_a_plugin_gets_the_envs_generic_agent_settings_as_a_builtin_does(arena):
    # the "broken" program gives no agent settings: the harness takes them from the env's YAML
    def config(name):
        return json.loads((folder(arena, "broken", name, 0) / "config.json").read_text())

    naive = config("naive")["agent_config"]
    assert {k: naive[k] for k in AGENT_KWARGS} == AGENT_KWARGS
    assert config("wrong-shape")["agent_config"] == naive


def test_a_plugin_cannot_take_a_builtin_name_or_write_outside_the_output_folder(arena):
    out, code, text = arena["runs"]["names"]
    assert code != 0
    assert not (out / ENV / "naive").exists(), "a plugin's run was written as naive's"
    escaped = [p for p in arena["root"].rglob("escaped*")]
    assert escaped == [], escaped


def test_an_sb3_agent_cannot_restart_the_judges_env_or_uncount_its_queries(arena):
    out, code, text = arena["runs"]["sb3"]
    folder = results.run_dir(out, SB3_ENV, "reset-dodge+ppo", 0)
    s = json.loads((folder / "summary.json").read_text())
    asked = max(e["asked"] for e in found(arena, "reset-dodge") if "asked" in e)
    assert any("reset_with_seed" in e for e in found(arena, "reset-dodge")), "it never tried"
    if s["status"] == "failed":  # refused: one line
        assert "\n" not in s["reason"], s["reason"]
        return
    m = results.read_metrics(folder / "metrics.csv")
    # every truth query it made is on the record, and the counters never go down
    assert m["truth_value_queries"][-1] == asked, (m["truth_value_queries"].tolist(), asked)
    assert (np.diff(m["truth_value_queries"]) >= 0).all()


def test_the_hunters_detectors_find_the_env_where_it_is(monkeypatch):
    """In the judge's own process the same detectors find the env: their silence in an agent's
    process means the env is not there, not that they are blind."""
    import gc

    import gymnasium as gym

    import rlhf_envs  # noqa: F401
    from agents import registry

    monkeypatch.setenv("JUDGE_TEST_HIDDEN", str(HIDDEN))
    monkeypatch.setattr(registry, "BUILTIN", registry.BUILTIN)  # the module rebinds it
    plugins: dict = {}
    exec(compile(PLUGINS, "jp.py", "exec"), plugins)
    env = gym.make_vec(
        ENV, num_envs=2, vectorization_mode="vector_entry_point", target_value=HIDDEN
    )
    env.reset(seed=SEEDS)
    core = env.unwrapped.core
    assert plugins["truth_like"](core) == "RLHFCore"
    assert plugins["explore"]([{"deep": [(env,)]}])  # through containers and attributes
    assert any(plugins["truth_like"](o) for o in gc.get_objects())

    def holding(core):  # a frame with the core in its locals
        return plugins["FrameHunter"]().walk()

    assert holding(core)


def test_an_sb3_agent_cannot_set_the_judges_reward_model_through_the_object_it_was_sent(arena):
    out, _, _ = arena["runs"]["sb3"]
    s = json.loads((results.run_dir(out, SB3_ENV, "rm-setter+ppo", 0) / "summary.json").read_text())
    if s["status"] == "failed":  # its reset after the start refused: one line
        assert "\n" not in s["reason"], s["reason"]
        return
    (seen,) = [e for e in found(arena, "rm-setter") if "after" in e]
    # reset with the run's own seed, the judge's RM starts where it started (not from 7.0)
    assert seen["after"] == seen["before"], seen
