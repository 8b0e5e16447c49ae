"""The judge and the judged: in harness runs every agent lives in a process of its own.

The boundary and its threat model: README, "Fair comparisons". Agents' processes are forked from
a clean ``forkserver``; the judge answers and charges their queries (:func:`agents.follower.answer`)
and reads agent -> judge messages as a JSON header and raw arrays of checked dtype and shape,
never unpickled (:func:`receive`).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import multiprocessing as mp
import os
import pickle
import re
import sys
import types
from dataclasses import dataclass, field, make_dataclass
from multiprocessing import shared_memory
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from agents.follower import Oracle

#: dtypes an agent may send (anything else is refused)
_DTYPES = {"float64": np.float64, "float32": np.float32, "int64": np.int64}
#: the largest message an agent may send (bytes)
_MAX_BYTES = 1 << 28


def take_secret() -> None:
    """Move the hidden split's secret (:data:`rlhf_envs.families.SECRET_VARIABLE`) from this
    process's environment into its memory, so that no process started from here inherits it."""
    from rlhf_envs import families

    value = os.environ.pop(families.SECRET_VARIABLE, None)
    if value:
        families.set_secret(value)


take_secret()  # at import: before this module can start any agent's process


class AgentFailed(RuntimeError):
    """The agent's process raised, died or broke the protocol (one line: what and where)."""


#: errors an agent's process reports as themselves (a diverged policy, a refused setting)
_ERRORS = {
    "FloatingPointError": FloatingPointError,
    "ValueError": ValueError,
    "TypeError": ValueError,
}


@functools.cache
def _ctx():
    context = mp.get_context("forkserver")
    context.set_forkserver_preload(
        ["torch", "agents.registry", "baselines.judge", "stable_baselines3"]
    )
    return context


# -- the wire ---------------------------------------------------------------------------------
def send(conn, op: str, meta: dict | None = None, arrays=()) -> None:
    """Agent -> judge, one message: a JSON header's length (4 bytes), the header, then each
    array's raw bytes."""
    arrays = [np.ascontiguousarray(torch.as_tensor(a).detach().numpy()) for a in arrays]
    specs = [[a.dtype.name, list(a.shape)] for a in arrays]
    head = json.dumps({"op": op, "meta": meta or {}, "arrays": specs}).encode()
    conn.send_bytes(
        b"".join([len(head).to_bytes(4, "little"), head, *(a.tobytes() for a in arrays)])
    )


def receive(conn) -> tuple[str, dict, list[torch.Tensor]]:
    """Judge <- agent: :func:`send`'s message, each part checked before it is read."""
    try:
        data = memoryview(conn.recv_bytes(_MAX_BYTES))
        end = 4 + int.from_bytes(data[:4], "little")
        head = json.loads(bytes(data[4:end]))
        op, meta, specs = head["op"], head["meta"], head["arrays"]
        if not (isinstance(op, str) and isinstance(meta, dict) and isinstance(specs, list)):
            raise TypeError("header")
        arrays = []
        for dtype, shape in specs:
            if dtype not in _DTYPES or not all(isinstance(n, int) and n >= 0 for n in shape):
                raise TypeError(f"array {dtype} {shape}")
            size = int(np.prod(shape, dtype=np.int64)) * np.dtype(_DTYPES[dtype]).itemsize
            if end + size > len(data):
                raise TypeError(f"array of {size} bytes past the message's end")
            flat = np.frombuffer(data[end : end + size], _DTYPES[dtype]).copy()
            arrays.append(torch.from_numpy(flat.reshape(shape)))
            end += size
        if end != len(data):
            raise TypeError(f"{len(data) - end} bytes past the arrays")
    except (EOFError, ConnectionError):
        raise AgentFailed("the agent's process ended unexpectedly") from None
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise AgentFailed(f"the agent's process sent a malformed message ({e})") from None
    return op, meta, arrays


class AgentProcess:
    """The judge's handle on one agent's process: requests, and the queries it serves meanwhile."""

    def __init__(self):
        self.conn, child = _ctx().Pipe()
        self.proc = _ctx().Process(target=_agent_main, args=(child,), daemon=True)
        main = sys.modules["__main__"]
        sys.modules["__main__"] = types.ModuleType("__main__")  # the child needs not import ours
        try:
            self.proc.start()
        finally:
            sys.modules["__main__"] = main
        child.close()
        self.shm: shared_memory.SharedMemory | None = None

    def request(self, msg: tuple | None, serve=None) -> tuple[str, dict, list[torch.Tensor]]:
        """Send ``msg`` (``None``: sent already); answer the agent's queries with
        ``serve(kind, ys)`` until it replies."""
        if msg is not None:
            self.tell(msg)
        while True:
            op, meta, arrays = receive(self.conn)
            if op == "query" and serve is not None and len(arrays) == 1:
                self.tell(serve(str(meta.get("kind")), arrays[0]))
            elif op == "error":
                kind = _ERRORS.get(str(meta.get("type")))
                if kind is None:
                    raise AgentFailed(f"{meta.get('type')}: {meta.get('message')}"[:500])
                raise kind(str(meta.get("message"))[:500])
            else:
                return op, meta, arrays

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.tell(("exit",))
        self.proc.join(2)
        if self.proc.is_alive():
            self.proc.kill()
        self.conn.close()
        if self.shm is not None:
            self.shm.close()
            self.shm.unlink()

    def tell(self, obj) -> None:
        """Judge -> agent: a plain pickle, tensors by value as numpy arrays (multiprocessing's own
        pickler would hand the agent the judge's tensor memory); large ones go through this
        process's outbox, a shared-memory block the judge writes and never reads (the agent has
        copied a message out before it answers, and the judge writes only after an answer)."""
        self._at = 0
        self.conn.send_bytes(pickle.dumps(_pack(obj, self), protocol=pickle.HIGHEST_PROTOCOL))

    def put(self, a: np.ndarray) -> _Shared:
        """``a`` written into the outbox (grown as needed) after this message's other arrays."""
        if self.shm is None or self._at + a.nbytes > self.shm.size:
            size = max(2 * (self._at + a.nbytes), 1 << 20)
            if self.shm is not None:
                self.shm.close()
                self.shm.unlink()
            self.shm, self._at = shared_memory.SharedMemory(create=True, size=size), 0
        np.ndarray(a.shape, a.dtype, self.shm.buf, self._at)[...] = a
        out = _Shared(self.shm.name, self._at, a.dtype.str, a.shape)
        self._at += a.nbytes
        return out


# -- white-box runs ---------------------------------------------------------------------------
def remote_seat(env, job, seeds: list[int], rows: slice, callback=None):
    """A :class:`agents.whitebox.Seat` whose agent (``job``'s, over ``seeds``, the env's
    experiments ``rows``) plays in its own process; close its :attr:`process` when done."""
    from agents.follower import answer, follower_state
    from agents.whitebox import Seat

    core, reads = env.unwrapped.core, tuple(r for r in job.reads.split(",") if r)

    class RemoteSeat(Seat):
        def serve(self, kind: str, ys: torch.Tensor):
            return answer(core, rows, reads, kind, ys, env.unwrapped.ys_error)

        def send(self, t: int, T: int, state: dict | None) -> None:
            self.process.tell(("play", t, T, state))

        def receive(self) -> tuple[torch.Tensor, torch.Tensor]:
            op, _, arrays = self.process.request(None, self.serve)
            if op != "played" or len(arrays) != 2:
                raise AgentFailed(f"the agent's process answered {op!r} with {len(arrays)} arrays")
            return arrays[0], arrays[1]

    seat = RemoteSeat(rows, reads, None, callback)
    seat.process = AgentProcess()
    start = follower_state(core, rows, reads, True)
    try:
        msg = ("whitebox", job.agent, job.agent_config, list(seeds), reads, start)
        seat.process.request(msg, seat.serve)
    except BaseException:
        seat.process.close()
        raise
    return seat


def from_judge(conn):
    return _unpack(pickle.loads(conn.recv_bytes()))


@dataclass(slots=True)
class _Tensor:
    """A tensor on the wire (its values as a numpy array)."""

    array: np.ndarray

    def read(self) -> np.ndarray:
        return self.array


@dataclass(slots=True)
class _Shared:
    """A tensor in the judge's outbox: where it is, to be copied out on the agent's side."""

    name: str
    at: int
    dtype: str
    shape: tuple

    def read(self) -> np.ndarray:
        if self.name not in _outboxes:  # (the fork server's children share the judge's tracker)
            _outboxes[self.name] = shared_memory.SharedMemory(self.name)
        return np.ndarray(self.shape, self.dtype, _outboxes[self.name].buf, self.at).copy()


_outboxes: dict[str, shared_memory.SharedMemory] = {}  # the agent's side: attached outboxes


def _pack(x, outbox: AgentProcess):
    if isinstance(x, torch.Tensor):
        a = x.detach().numpy()
        return outbox.put(a) if a.nbytes >= 1 << 14 else _Tensor(a)
    if isinstance(x, (tuple, list)):
        return type(x)(_pack(v, outbox) for v in x)
    if isinstance(x, dict):
        out = copy.copy(x)  # the same class (FlatParams keeps its flat vector)
        out.update([(k, _pack(v, outbox)) for k, v in x.items()])
        if hasattr(x, "flat"):
            out.flat = _pack(x.flat, outbox)
        return out
    if any(isinstance(v, torch.Tensor) for v in getattr(x, "__dict__", {}).values()):
        out = copy.copy(x)  # an object holding tensors (the reward model): its tensors packed
        vars(out).update((k, _pack(v, outbox)) for k, v in vars(x).items())
        return out
    return x


def _unpack(x):
    if isinstance(x, (_Tensor, _Shared)):
        return torch.from_numpy(x.read())
    if isinstance(x, (tuple, list)):
        return type(x)(_unpack(v) for v in x)
    if isinstance(x, dict):
        x.update([(k, _unpack(v)) for k, v in x.items()])
        if hasattr(x, "flat"):
            x.flat = _unpack(x.flat)
    elif any(isinstance(v, (_Tensor, _Shared)) for v in getattr(x, "__dict__", {}).values()):
        vars(x).update((k, _unpack(v)) for k, v in vars(x).items())
    return x


# -- SB3 runs ---------------------------------------------------------------------------------
def judge_sb3(job, seed: int, record, eval_responses: int) -> dict[str, float]:
    """Run ``seed`` of the SB3 job with the agent and its algorithm in their own process: each
    step's action crosses here, the env steps, ``record(info)`` (the judge's recorder, True once
    the run has its rounds) sees the whole ``info``, and the agent gets the ``info`` without the
    truth plus, after each RM round, its copy of the follower. Returns the evaluation numbers of
    ``eval_responses`` deterministic responses of the final policy, scored on a copy of the env."""
    from agents.follower import SEALED_INFO, answer, follower_state

    env = gym.make(job.env_id, **job.env_kwargs)
    inner, reads = env.unwrapped, tuple(r for r in job.reads.split(",") if r)

    def serve(kind: str, ys: torch.Tensor):
        return answer(inner.core, slice(None), reads, kind, ys, inner.ys_error)

    def shown(info: dict) -> dict:
        return {k: v for k, v in info.items() if k not in SEALED_INFO}

    record.core = inner.core
    proc = AgentProcess()
    try:
        spaces = (env.observation_space, env.action_space)
        msg = ("sb3", job.agent, job.agent_config, seed, job.policy_optimizer, job.hyperparams)
        op, meta, arrays = proc.request((*msg, job.tensorboard, job.env_id, spaces, reads), serve)
        started, done, evaluating = False, False, None
        while op != "end":
            if op == "reset":
                if started and meta.get("seed") is not None:
                    raise AgentFailed("the agent asked for a seeded reset mid-run (refused)")
                obs, info = env.reset(seed=None if started else seed)
                state = None if started else follower_state(inner.core, slice(None), reads, True)
                started = True
                reply: Any = (obs, shown(info), state)
            elif op == "step" and len(arrays) == 1 and not done:
                obs, reward, term, trunc, info = env.step(arrays[0].numpy())
                done = record(info)
                state = None
                if info.get("rm_updated"):
                    state = follower_state(inner.core, slice(None), reads, False)
                y = inner.last_response
                # the reset the agent's vector env makes next, made here: one message less
                after = None
                if term or trunc:
                    after = env.reset()
                    after = (after[0], shown(after[1]))
                reply = (obs, reward, term, trunc, shown(info), y, state, done, after)
            elif op == "eval" and done and evaluating is None:
                evaluating = copy.deepcopy(inner)  # the run's env, RM and counters untouched
                scores: dict[str, list] = {"": [], "blind_cluster": [], "other_clusters": []}
                reply = evaluating.reset()[0]
            elif op == "eval_step" and evaluating is not None and len(arrays) == 1:
                obs, _, term, trunc, info = evaluating.step(arrays[0].numpy())
                if "true_utility" in info and info.get("response_complete") is not False:
                    scores[""].append(info["true_utility"])
                    if "in_blind_cluster" in info:
                        side = "blind_cluster" if info["in_blind_cluster"] else "other_clusters"
                        scores[side].append(info["true_utility"])
                if term or trunc:
                    obs, _ = evaluating.reset()
                reply = (obs, len(scores[""]) >= eval_responses)
            else:
                raise AgentFailed(f"the agent's process sent {op!r} out of turn")
            op, meta, arrays = proc.request(reply, serve)
        record(None)  # the last step's row, with the queries its scoring made
        out = {"eval_true_utility": float(np.mean(scores[""]))}
        if scores["blind_cluster"] or scores["other_clusters"]:
            for side in ("blind_cluster", "other_clusters"):
                out[f"eval_true_utility_{side}"] = float(np.mean(scores[side] or [np.nan]))
        return out
    finally:
        proc.close()


# -- plugins, described by their own process ---------------------------------------------------
def agent_class(spec: str) -> type:
    """The agent class of a built-in name, or for ``module:Class`` a stand-in with the plugin's
    declarations, described by a process of its own: the plugin is never imported here."""
    from agents import registry

    if spec in registry.BUILTIN or not isinstance(spec, str) or ":" not in spec:
        return registry.get(spec)
    return _stand_in(spec)


@functools.cache  # one stand-in (and one describing process) per plugin
def _stand_in(spec: str) -> type:
    from agents import registry
    from agents.whitebox import READS

    proc = AgentProcess()
    try:
        _, d, _ = proc.request(("describe", spec, None))
    except AgentFailed as e:
        proc.close()
        raise ValueError(f"cannot load agent {spec!r}: {e}") from None
    ok = (
        isinstance(d.get("name"), str)
        and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", d["name"]) is not None
        and d["name"] not in registry.BUILTIN
        and d["name"] != "base"
        and d.get("role") in ("baseline", "method", "ceiling")
        and set(d.get("reads", ())) <= set(READS)
        and isinstance(d.get("fields"), dict)
    )
    if not ok:
        raise ValueError(
            f"agent {spec!r} needs its own name (letters, digits, '_', '.', '-'; not a built-in "
            "name), a role, known reads and a dataclass config"
        )

    def built(self) -> None:
        _, out, _ = proc.request(("describe", spec, {k: getattr(self, k) for k in d["fields"]}))
        self._built = out
        for k, v in out["config"].items():
            setattr(self, k, v)

    defaults = [
        (k, Any, field(default_factory=lambda v=v: copy.deepcopy(v)))
        if isinstance(v, (list, dict))
        else (k, Any, field(default=v))
        for k, v in d["fields"].items()
    ]
    config_cls = make_dataclass(
        f"{d['name']}-config",
        defaults,
        namespace={
            "__post_init__": built,
            "to_dict": lambda self: copy.deepcopy(self._built["config"]),
        },
    )

    class Plugin:
        name, role, reads, config_cls = d["name"], d["role"], tuple(d["reads"]), None
        cost, sb3_algos, llm_penalty = float(d.get("cost", 1.0)), d.get("sb3_algos"), None
        paper_reference: dict = {}
        __doc__ = str(d.get("doc", ""))

        def __init__(self, config=None, seed=0, **fields_):
            self.config = config if config is not None else self.config_cls(**fields_)
            self.seeds = [seed] if isinstance(seed, int) else list(seed)

        def declared_reads(self, sb3: bool = False) -> tuple[str, ...]:
            return tuple(self.config._built["reads_sb3" if sb3 else "reads"])

    Plugin.config_cls = config_cls
    return Plugin


def die_with_parent(parent: int | None = None) -> None:
    """Linux: ask the kernel to kill this worker when the sweep's main process dies, so a killed
    sweep leaves no orphan still writing run folders (best effort elsewhere). ``parent``: the pid
    that started this worker; if it died before the request was in place, the worker exits at once.
    """
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        with contextlib.suppress(OSError):  # PR_SET_PDEATHSIG
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    if parent is not None and os.getppid() != parent:
        os._exit(1)


def algorithm(name: str):
    """The stable-baselines3 class of ``name`` (one of :data:`ALGOS`)."""
    import stable_baselines3 as sb3

    return {"ppo": sb3.PPO, "sac": sb3.SAC, "a2c": sb3.A2C}[name]


# -- the agent's process ------------------------------------------------------------------------
def _agent_main(conn) -> None:
    die_with_parent()  # with the fork server, which ends with the judge
    torch.set_num_threads(1)
    msg = None
    while True:
        try:
            msg = msg or from_judge(conn)
        except EOFError:
            return
        try:
            if msg[0] == "exit":
                return
            handler = {"whitebox": _play_white_box, "sb3": _play_sb3, "describe": _describe}
            msg = handler[msg[0]](conn, *msg[1:])  # a session returns the message that ended it
        except BaseException as e:  # noqa: BLE001  (reported to the judge, one line)
            send(conn, "error", {"type": type(e).__name__, "message": str(e).split("\n")[0]})
            msg = None


def _describe(conn, spec: str, kwargs: dict | None) -> None:
    from dataclasses import MISSING, fields

    from agents import registry

    cls = registry.get(spec)
    if kwargs is None:
        keep = ("name", "role", "reads", "cost", "sb3_algos")
        out = {k: list(v) if isinstance(v, tuple) else v for k in keep if (v := getattr(cls, k))}
        out["fields"] = {
            f.name: f.default if f.default is not MISSING else f.default_factory()
            for f in fields(cls.config_cls)
        }
        return send(conn, "described", {**out, "doc": cls.__doc__ or ""})
    agent = cls(cls.config_cls(**kwargs))
    out = {"config": agent.config.to_dict(), "reads": list(agent.declared_reads())}
    send(conn, "built", {**out, "reads_sb3": list(agent.declared_reads(True))})


def _ask(conn, kind: str, ys):
    send(conn, "query", {"kind": kind}, [torch.as_tensor(ys)])
    return from_judge(conn)


def _play_white_box(conn, spec, agent_config, seeds, reads, state) -> None:
    from agents import registry
    from agents.whitebox import Player

    cls = registry.get(spec)
    agent = cls(cls.config_cls(**agent_config), seed=seeds)
    player = Player(agent, reads, state, lambda kind, ys: _ask(conn, kind, ys))
    send(conn, "ready")
    while (msg := from_judge(conn))[0] == "play":
        send(conn, "played", {}, player.play(*msg[1:]))
    return msg


def _play_sb3(
    conn, spec, agent_config, seed, algo, hyperparams, tensorboard, env_id, spaces, reads
):
    from stable_baselines3.common.callbacks import BaseCallback, CallbackList

    from agents import registry
    from agents.wrappers import AgentRewardWrapper

    cls = registry.get(spec)
    agent = cls(cls.config_cls(**agent_config), seed=seed)
    remote = RemoteEnv(conn, *spaces, reads)
    env = AgentRewardWrapper(remote, agent)

    class Stop(BaseCallback):
        def _on_step(self) -> bool:
            return not remote.done

    model = algorithm(algo)(
        "MlpPolicy",
        env,
        seed=seed,
        device="cpu",
        verbose=0,
        tensorboard_log=tensorboard,
        **hyperparams,
    )
    model.learn(
        total_timesteps=10**9,
        callback=CallbackList([*agent.sb3_callbacks(), Stop()]),
        tb_log_name=f"{env_id}/{agent.name}+{algo}/seed_{seed}_sb3",
    )
    send(conn, "eval")
    obs, finished = from_judge(conn), False
    while not finished:
        action, _ = model.predict(obs, deterministic=True)
        send(conn, "eval_step", {}, [action])
        obs, finished = from_judge(conn)
    send(conn, "end")


class RemoteEnv(gym.Env, Oracle):
    """The agent process's stand-in for the judge's env (same spaces): each call crosses to the
    judge; it is also the wrapper's link (:class:`agents.wrappers.AgentRewardWrapper`): the
    follower's state the judge sent, and queries."""

    def __init__(self, conn, observation_space, action_space, reads):
        Oracle.__init__(self, lambda kind, ys: _ask(conn, kind, ys))
        self.conn, self.reads = conn, reads
        self.observation_space, self.action_space = observation_space, action_space
        self.last_response, self.done, self._state, self._after = None, False, None, None

    def reset(self, *, seed=None, options=None):
        if self._after is not None and seed is None:  # the judge has reset already
            out, self._after = self._after, None
            return out
        send(self.conn, "reset", {"seed": seed})
        obs, info, self._state = from_judge(self.conn)
        return obs, info

    def step(self, action):
        send(self.conn, "step", {}, [np.asarray(action)])
        obs, reward, term, trunc, info, self.last_response, state, self.done, self._after = (
            from_judge(self.conn)
        )
        self._state = state if state is not None else self._state
        return obs, reward, term, trunc, info

    def follower_state(self, start: bool) -> dict:
        return self._state

    def counts(self) -> dict:
        return {}  # the judge records the counters
