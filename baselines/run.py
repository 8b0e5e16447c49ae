"""Run agents on the suite's environments: one folder per (env, agent, seed).

Examples::

    python -m baselines.run --agent fpo
    python -m baselines.run --agent naive --env RLHFNeuralBlindSpot-v0 --seeds 0-9 --jobs 2
    python -m baselines.run --agent fpo-relaxed --env-kwargs label_noise=0.5 --agent-kwargs fpo_gamma=0.2

Each run writes ``OUT/ENV/AGENT/seed_S/`` with ``config.json`` (every setting, package versions,
git commit), ``metrics.csv`` (per round) and ``summary.json`` (written last: its presence marks a
finished run). All writes are atomic. Rerunning skips finished runs with the same settings;
``--force`` redoes them. The seeds of one (env, agent) run as one batched tensor program (the
env's natively vectorised form); results do not depend on how seeds are batched or on ``--jobs``.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import re
import sys
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty
from typing import Any

import yaml

from baselines import results

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
DEFAULT_ENV = "RLHFBlindSpot-v0"
#: default caps on one command's size; --max-runs / --max-rounds raise them
MAX_RUNS = 1000
MAX_ROUNDS = 1_000_000


class CLIError(Exception):
    """A usage problem, reported as one line and exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage dump
        raise CLIError(message)


# -- parsing helpers -----------------------------------------------------------------------------
def parse_seeds(text: str, max_runs: int = MAX_RUNS) -> list[int]:
    """``"0-9"``, ``"3"``, ``"0,2,5"`` or ``"0-4,10-12"`` -> sorted unique seeds.

    Seeds are ints in ``[0, 2^31)``; more than ``max_runs`` of them is refused before any list
    is built (``--max-runs`` raises the cap).
    """
    parts: list[tuple[int, int]] = []
    for part in str(text).split(","):
        part = part.strip()
        if m := re.fullmatch(r"(\d{1,30})-(\d{1,30})", part):
            lo, hi = int(m[1]), int(m[2])
            if lo > hi:
                raise CLIError(f"--seeds: range {part!r} is empty (start > end)")
        elif re.fullmatch(r"\d{1,30}", part):
            lo = hi = int(part)
        else:
            raise CLIError(f"--seeds: cannot read {part!r}; use e.g. 0-9, 3 or 0,2,5 (ints >= 0)")
        if hi >= 2**31:
            raise CLIError(f"--seeds must be ints in [0, 2^31), got {part!r}")
        parts.append((lo, hi))
    if sum(hi - lo + 1 for lo, hi in parts) > max_runs:
        raise CLIError(
            f"--seeds: {text!r} asks for more than {max_runs} seeds; raise the cap with "
            "--max-runs if you mean it"
        )
    return sorted({s for lo, hi in parts for s in range(lo, hi + 1)})


def parse_kwargs(items: list[str] | None, flag: str) -> dict[str, Any]:
    """``["k=v", ...]`` -> dict, values read as YAML (numbers, bools, lists, strings)."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item or item.startswith("="):
            raise CLIError(f"{flag}: expected key=value, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = _read_value(value)
    return out


def _read_value(text: str) -> Any:
    for cast in (int, float):  # YAML 1.1 would read "1e6" as a string
        try:
            return cast(text)
        except ValueError:
            pass
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def load_defaults(env_id: str) -> dict[str, Any]:
    table = yaml.safe_load((CONFIG_DIR / "whitebox.yaml").read_text()) or {}
    return table.get(env_id, {})


# -- jobs ------------------------------------------------------------------------------------------
@dataclass
class Job:
    env_id: str
    agent: str
    seeds: list[int]
    rounds: int
    env_kwargs: dict[str, Any]
    agent_config: dict[str, Any]
    out: str
    digests: dict[int, str] = field(default_factory=dict)
    settings: dict[int, dict[str, Any]] = field(default_factory=dict)
    run_name: str = ""
    policy_optimizer: str = "whitebox"
    hyperparams: dict[str, Any] = field(default_factory=dict)
    force: bool = False  # redo even if another process finishes the run first
    tensorboard: str | None = None  # output options, not settings: not in the config hash
    wandb: str | None = None

    def __post_init__(self) -> None:
        self.run_name = self.run_name or self.agent


def resolve(args: argparse.Namespace) -> tuple[list[Job], list[tuple[str, int]]]:
    """Validate the CLI arguments and build the pending jobs; returns (jobs, skipped)."""
    return plan(
        env_id=args.env,
        agent=args.agent,
        seeds=parse_seeds(args.seeds, args.max_runs),
        rounds=args.rounds,
        env_kwargs=parse_kwargs(args.env_kwargs, "--env-kwargs"),
        agent_kwargs=parse_kwargs(args.agent_kwargs, "--agent-kwargs"),
        out=args.out,
        force=args.force,
        batch_size=args.batch_size,
        jobs=args.jobs,
        policy_optimizer=args.policy_optimizer,
        sb3_kwargs=parse_kwargs(args.sb3_kwargs, "--sb3-kwargs"),
        max_rounds=args.max_rounds,
    )


def run_folder_name(agent_name: str, policy_optimizer: str = "whitebox", tag: str = "") -> str:
    """``AGENT[+ALGO][@TAG]``: the folder of an agent's runs under ``OUT/ENV/``."""
    name = agent_name if policy_optimizer == "whitebox" else f"{agent_name}+{policy_optimizer}"
    return f"{name}@{tag}" if tag else name


def plan(
    env_id: str,
    agent: str,
    seeds: list[int],
    rounds: int | None,
    env_kwargs: dict[str, Any],
    agent_kwargs: dict[str, Any],
    out: str | Path,
    force: bool = False,
    batch_size: int = 10,
    jobs: int = 1,
    tag: str = "",
    policy_optimizer: str = "whitebox",
    sb3_kwargs: dict[str, Any] | None = None,
    max_rounds: int = MAX_ROUNDS,
) -> tuple[list[Job], list[tuple[str, int]]]:
    """Validate one (env, agent, settings) over seeds and build its pending jobs.

    Everything is checked before anything runs (env kwargs by building the env, agent kwargs by
    building the config). ``tag`` names a hyperparameter variant: its runs go to
    ``OUT/ENV/AGENT@TAG/seed_S``. ``policy_optimizer`` is ``whitebox`` (the paper's gradient agents,
    seeds batched) or an SB3 algorithm (``ppo``, ``sac``, ``a2c``; runs go to
    ``AGENT+ALGO``). Returns (jobs, skipped finished runs).
    """
    import gymnasium as gym

    import rlhf_envs  # noqa: F401  (registers the envs)
    from agents import registry
    from agents.whitebox import renamed_fields

    try:
        agent_cls = registry.get(agent)
    except ValueError as e:
        raise CLIError(f"--agent: {e}") from None
    if env_id not in gym.registry:
        known = ", ".join(rlhf_envs.ENV_IDS)
        raise CLIError(f"--env: unknown environment {env_id!r}; known: {known}")
    try:
        env = gym.make(env_id, **env_kwargs)
        env.close()
    except (TypeError, ValueError) as e:
        raise CLIError(f"--env-kwargs: {str(e).split(' was raised from')[0]}") from None
    defaults = load_defaults(env_id)
    hyperparams: dict[str, Any] = {}
    if policy_optimizer == "whitebox":
        if sb3_kwargs:
            raise CLIError("--sb3-kwargs needs an SB3 --policy-optimizer (ppo, sac or a2c)")
        if gym.spec(env_id).vector_entry_point is None:
            raise CLIError(
                f"--env: {env_id} has no white-box agents; use --policy-optimizer ppo (or sac, a2c)"
            )
    else:
        from baselines.sb3_runner import ALGOS, algorithm, allowed_algos

        if policy_optimizer not in ALGOS:
            raise CLIError(
                f"--policy-optimizer must be whitebox or one of {', '.join(ALGOS)}, got {policy_optimizer!r}"
            )
        if policy_optimizer not in allowed_algos(agent):
            raise CLIError(
                f"--policy-optimizer {policy_optimizer} does not work with --agent {agent} (on-policy "
                f"algorithms only); allowed --policy-optimizer for --agent {agent}: "
                f"{', '.join(allowed_algos(agent))}"
            )
        sb3 = defaults.get("sb3", {})
        hyperparams = dict(sb3.get(policy_optimizer, {}))
        if sb3_kwargs:
            import inspect

            cls = algorithm(policy_optimizer)
            allowed = set(inspect.signature(cls.__init__).parameters) - {
                "self",
                "policy",
                "env",
                "seed",
                "device",
                "verbose",
                "_init_setup_model",
            }
            unknown = sorted(set(sb3_kwargs) - allowed)
            if unknown:
                raise CLIError(
                    f"--sb3-kwargs: unknown {policy_optimizer} argument(s) {unknown}; allowed: "
                    f"{', '.join(sorted(allowed))}"
                )
            hyperparams.update(sb3_kwargs)
        if rounds is None and "rounds" not in agent_kwargs:
            rounds = sb3.get("rounds")
    name = agent_cls.name
    resolved = {**defaults.get("agent", {}), **defaults.get("agents", {}).get(name, {})}
    allowed = agent_cls.config_cls.field_names()
    agent_kwargs = renamed_fields(agent_kwargs)
    unknown = sorted(set(agent_kwargs) - set(allowed))
    if unknown:
        raise CLIError(f"--agent-kwargs: unknown name(s) {unknown}; allowed: {allowed}")
    resolved.update(agent_kwargs)
    # precedence: --rounds, then --agent-kwargs rounds=..., then the YAML (SB3 section, env)
    if rounds is not None and "rounds" in agent_kwargs and agent_kwargs["rounds"] != rounds:
        raise CLIError(
            f"--rounds {rounds} and --agent-kwargs rounds={agent_kwargs['rounds']} disagree; "
            "give one"
        )
    if rounds is None and "rounds" not in agent_kwargs:
        rounds = defaults.get("rounds")
    if rounds is not None:
        resolved["rounds"] = rounds
    try:
        agent_cfg = agent_cls.config_cls(**resolved)
    except (TypeError, ValueError) as e:
        raise CLIError(f"--agent-kwargs: {e}") from None
    rounds = agent_cfg.rounds
    if rounds > max_rounds:
        raise CLIError(
            f"--rounds: {rounds} rounds per run is above the limit of {max_rounds}; "
            "raise it with --max-rounds if you mean it"
        )
    run_name = run_folder_name(name, policy_optimizer, tag)

    pending, skipped = [], []
    digests, settings = {}, {}
    for seed in seeds:
        s = {
            "env_id": env_id,
            "env_kwargs": env_kwargs,
            "agent": agent,
            "run_name": run_name,
            "agent_config": agent_cfg.to_dict(),
            "rounds": rounds,
            "seed": seed,
        }
        if policy_optimizer != "whitebox":
            s.update(policy_optimizer=policy_optimizer, hyperparams=hyperparams)
        digest = results.config_hash(s)
        folder = results.run_dir(out, env_id, run_name, seed)
        state, why = results.run_state(folder, digest)
        if state == "other" and not force:
            raise CLIError(
                f"{folder} holds a finished run with other settings; pass --force to redo it "
                "or choose another --out"
            )
        if state == "done" and not force:
            skipped.append((run_name, seed))
            continue
        if state == "damaged":
            print(f"redoing {folder}: {why}", file=sys.stderr)
        pending.append(seed)
        digests[seed], settings[seed] = digest, s
    n_chunks = max(-(-len(pending) // batch_size), min(jobs, len(pending)))
    out_jobs = []
    for i in range(n_chunks):
        chunk = pending[i::n_chunks]
        if chunk:
            out_jobs.append(
                Job(
                    env_id,
                    agent,
                    chunk,
                    rounds,
                    env_kwargs,
                    agent_cfg.to_dict(),
                    str(out),
                    {s: digests[s] for s in chunk},
                    {s: settings[s] for s in chunk},
                    run_name,
                    policy_optimizer,
                    hyperparams,
                    force,
                )
            )
    return out_jobs, skipped


_progress_queue = None


def _init_worker(queue, parent: int | None = None) -> None:
    global _progress_queue
    _progress_queue = queue
    _die_with_parent(parent)


def _die_with_parent(parent: int | None = None) -> None:
    """Linux: ask the kernel to kill this worker when the sweep's main process dies, so a
    killed sweep leaves no orphan still writing run folders (best effort elsewhere).

    ``parent``: the pid of the process that started this worker; if it died while the worker
    was starting (before the request was in place), the worker exits at once.
    """
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            import signal

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass
    if parent is not None and os.getppid() != parent:
        os._exit(1)


def run_job(job: Job, progress=None) -> dict[str, Any]:
    """Run one batch of seeds and write its run folders. Never raises: failures are recorded.

    Each seed's folder is locked for the job's duration (:class:`results.RunLock`); a seed whose
    folder another process holds, or that another process finished since planning, is left
    alone (``"busy"`` / ``"done_elsewhere"`` in the outcome). Each seed is written and sealed as
    soon as it finishes (SB3 runs one seed at a time; the white-box seeds finish together).
    """
    return run_jobs([job], progress)[0]


def run_jobs(jobs: list[Job], progress=None) -> list[dict[str, Any]]:
    """Run several jobs as one program where they can share it, else one after the other; one
    outcome per job, as :func:`run_job`. Never raises.

    White-box jobs of one env with the same env settings and rounds (see :func:`batch_key`) run
    side by side on one batched env (:func:`agents.whitebox.learn_together`): the env's work is
    done once for all, and every run's numbers are the ones it gets alone. An agent whose policy
    diverges is recorded as stopped, as alone, while the others go on; if the shared program
    fails otherwise, each job is run again on its own, so that a failure is recorded against
    its own runs only.
    """
    held = [_lock_seeds(job) for job in jobs]
    try:
        todo = [(job, h[1]) for job, h in zip(jobs, held, strict=True) if h[1]]
        done = _run_together(todo, progress) if len(todo) > 1 else {}
        outcomes = []
        for job, (_, seeds, busy, elsewhere) in zip(jobs, held, strict=True):
            if not seeds:
                outcome = _outcome(seeds, "ok", "", 0.0)
            elif id(job) in done:
                outcome = done[id(job)]
            else:
                outcome = _run_locked(job, seeds, progress)
            busy_folders = [
                str(results.run_dir(job.out, job.env_id, job.run_name, s)) for s in busy
            ]
            outcomes.append(
                {**outcome, "busy": busy, "busy_folders": busy_folders, "done_elsewhere": elsewhere}
            )
        return outcomes
    finally:
        for locks, *_ in held:
            for lock in locks:
                lock.release()


def _lock_seeds(job: Job):
    """``(locks, seeds, busy, done_elsewhere)``: the job's seeds whose folders this process now
    holds and still has to run, and those another process holds or has finished."""
    locks, seeds, busy, done_elsewhere = [], [], [], []
    for seed in job.seeds:
        folder = results.run_dir(job.out, job.env_id, job.run_name, seed)
        lock = results.RunLock(folder)
        if not lock.acquire():
            busy.append(seed)
            continue
        if not job.force and results.run_state(folder, job.digests[seed])[0] == "done":
            lock.release()  # finished by another process since this job was planned
            done_elsewhere.append(seed)
            continue
        locks.append(lock)
        seeds.append(seed)
    return locks, seeds, busy, done_elsewhere


def batch_key(job: Job) -> str | None:
    """Jobs with the same key can share one batched program (``None``: runs alone): white-box
    jobs of one env with the same env settings and rounds."""
    if job.policy_optimizer != "whitebox":
        return None
    return results.config_hash(
        {"env_id": job.env_id, "env_kwargs": job.env_kwargs, "r": job.rounds}
    )


def _white_box_env(job: Job, seeds: list[int]):
    """The job's env as a native vector env of ``seeds``, reset with them."""
    import gymnasium as gym

    import rlhf_envs  # noqa: F401

    env = gym.make_vec(
        job.env_id, num_envs=len(seeds), vectorization_mode="vector_entry_point", **job.env_kwargs
    )
    env.reset(seed=list(seeds))
    return env


def _make_agent(job: Job, seeds: list[int]):
    """The job's agent with its settings, over ``seeds``."""
    from agents import registry

    cls = registry.get(job.agent)
    return cls(cls.config_cls(**job.agent_config), seed=list(seeds))


def _run_together(todo: list[tuple[Job, list[int]]], progress=None) -> dict[int, dict[str, Any]]:
    """Run white-box jobs (locked seeds each) on one batched env; ``{id(job): outcome}``, or
    ``{}`` if they cannot share a program or the shared program stopped (then the caller runs
    each job on its own)."""
    import torch

    from agents.whitebox import learn_together

    keys = {batch_key(job) for job, _ in todo}
    if len(keys) != 1 or None in keys:
        return {}
    torch.set_num_threads(1)
    report = progress or (_progress_queue.put if _progress_queue is not None else None)
    units, sent = [0], [0]
    did = [0] * len(todo)  # rounds each job's agent has run

    def callback(k: int, per_round: int):
        def call(_row) -> None:
            did[k] += 1
            units[0] += per_round
            if report is not None and units[0] >= 50:
                report(units[0])
                sent[0] += units[0]
                units[0] = 0

        return call

    start = time.perf_counter()
    first = todo[0][0]
    try:
        all_seeds = [s for _, seeds in todo for s in seeds]
        env = _white_box_env(first, all_seeds)
        agents = [_make_agent(job, seeds) for job, seeds in todo]
        callbacks = [callback(k, len(seeds)) for k, (_, seeds) in enumerate(todo)]
        stopped: dict[int, FloatingPointError] = {}  # diverged agents stop, the others go on
        histories = learn_together(agents, env, first.rounds, callbacks, stopped)
    except Exception:  # noqa: BLE001  (each job is rerun alone and records its own failure)
        if report is not None and sent[0]:
            report(-sent[0])  # the reruns count their rounds again
        return {}
    # a stopped agent's rounds that will not run count as done: the bar ends full
    left = sum((first.rounds - did[k]) * len(todo[k][1]) for k in stopped)
    if report is not None and units[0] + left:
        report(units[0] + left)
    wall = time.perf_counter() - start
    names = [job.run_name for job, _ in todo]
    done: dict[int, dict[str, Any]] = {}
    try:
        for k, ((job, seeds), history) in enumerate(zip(todo, histories, strict=True)):
            per_run = wall / len(all_seeds)
            if k in stopped:  # what the job records alone: its seeds stopped, with the reason
                reason = str(stopped[k])
                tb = "".join(traceback.format_exception(stopped[k]))
                for seed in seeds:
                    write_run(
                        job, seed, seeds, per_run, wall, status="stopped", reason=reason, tb=tb
                    )
                done[id(job)] = _outcome(seeds, "stopped", reason, wall, list(seeds))
                continue
            for i, seed in enumerate(seeds):
                write_run(job, seed, seeds, per_run, wall, history, i, shared=names)
            done[id(job)] = _outcome(seeds, "ok", "", wall)
    except Exception:  # noqa: BLE001  (a job not written yet is run again on its own)
        rerun = sum(first.rounds * len(seeds) for job, seeds in todo if id(job) not in done)
        if report is not None and rerun:
            report(-rerun)  # its rerun counts its rounds again
    return done


def _outcome(
    seeds: list[int], status: str, reason: str, wall: float, failed: list[int] | None = None
) -> dict[str, Any]:
    return {
        "seeds": seeds,
        "status": status,
        "reason": reason,
        "wall": wall,
        "failed": failed or [],
    }


def _run_locked(job: Job, seeds: list[int], progress=None) -> dict[str, Any]:
    import torch

    import rlhf_envs  # noqa: F401
    from agents import Agent

    torch.set_num_threads(1)
    report = progress or (_progress_queue.put if _progress_queue is not None else None)
    start = time.perf_counter()
    status, reason, tb = "ok", "", ""
    units, sent = [0], [0]
    written: list[int] = []

    def callback(_row, per_round: int = 1) -> None:
        units[0] += per_round
        if report is not None and units[0] >= 50:
            report(units[0])
            sent[0] += units[0]
            units[0] = 0

    try:
        if job.policy_optimizer == "whitebox":
            env = _white_box_env(job, seeds)
            agent = _make_agent(job, seeds)
            n = len(seeds)
            # the harness's own loop, even if the agent overrides learn(): it sees the env
            history = Agent.learn(agent, env, job.rounds, lambda row: callback(row, n))
            wall = time.perf_counter() - start
            for i, seed in enumerate(seeds):
                write_run(job, seed, seeds, wall / n, wall, history=history, col=i)
                written.append(seed)
        else:
            from baselines.sb3_runner import learn_sb3

            for seed in seeds:  # SB3 runs one experiment at a time: each is saved when done
                t0 = time.perf_counter()
                h = learn_sb3(
                    job.env_id,
                    job.env_kwargs,
                    job.agent,
                    job.agent_config,
                    job.policy_optimizer,
                    job.hyperparams,
                    job.rounds,
                    seed,
                    callback,
                    tensorboard_log=job.tensorboard,
                )
                took = time.perf_counter() - t0
                write_run(job, seed, seeds, took, time.perf_counter() - start, history=h, col=0)
                written.append(seed)
    except FloatingPointError as e:
        status, reason, tb = "stopped", str(e), traceback.format_exc()
    except Exception as e:  # recorded in the run folder; the sweep goes on
        status, reason, tb = "failed", f"{type(e).__name__}: {e}", traceback.format_exc()
    if report is not None and job.rounds * len(seeds) > sent[0]:
        report(job.rounds * len(seeds) - sent[0])  # the rest, and rounds a stop left unrun
    wall = time.perf_counter() - start
    rest = [s for s in seeds if s not in written]
    for seed in rest:
        write_run(job, seed, seeds, wall / len(seeds), wall, status=status, reason=reason, tb=tb)
    return _outcome(seeds, status if rest else "ok", reason if rest else "", wall, rest)


def write_run(
    job: Job,
    seed: int,
    batch: list[int],
    wall: float,
    batch_wall: float,
    history: dict | None = None,
    col: int = 0,
    status: str = "ok",
    reason: str = "",
    tb: str = "",
    shared: list[str] | None = None,
) -> None:
    """Write and seal one run folder (the caller holds its lock).

    The old seal goes first, so a writer killed half-way leaves an unsealed folder that the next
    run redoes; ``manifest.json`` goes last.
    """
    from agents import registry

    folder = results.run_dir(job.out, job.env_id, job.run_name, seed)
    (folder / results.MANIFEST).unlink(missing_ok=True)
    results.remove_stale_temps(folder)  # left by a writer killed mid-write (we hold the lock)
    cls = registry.get(job.agent)
    reads = cls(cls.config_cls(**job.agent_config)).declared_reads(
        job.policy_optimizer != "whitebox"
    )
    config = {
        **job.settings[seed],
        "config_hash": job.digests[seed],
        "batched_with": batch,
        **({"batched_with_agents": shared} if shared else {}),
        "versions": results.package_versions(),
        "git_commit": results.git_commit(),
        "code_hash": results.code_hash(),
    }
    results.atomic_write_json(folder / "config.json", config)
    summary: dict[str, Any] = {
        "status": status,
        "config_hash": job.digests[seed],
        "env_id": job.env_id,
        "agent": job.agent,
        "run_name": job.run_name,
        "seed": seed,
        "rounds": job.rounds,
        "wall_time_s": wall,
        "batch_wall_time_s": batch_wall,
        "reads": ",".join(reads),
    }
    if history is not None:
        results.atomic_write_text(folder / "metrics.csv", results.metrics_csv(history, col))
        summary.update(summarise(history, col))
        (folder / "error.txt").unlink(missing_ok=True)
        files = ["config.json", "metrics.csv", "summary.json"]
    else:
        summary["reason"] = reason
        results.atomic_write_text(folder / "error.txt", tb)
        (folder / "metrics.csv").unlink(missing_ok=True)
        files = ["config.json", "error.txt", "summary.json"]
    results.atomic_write_json(folder / "summary.json", summary)
    results.write_manifest(folder, files)
    if history is not None and (job.tensorboard or job.wandb):
        from baselines.tracking import open_trackers

        name = f"{job.env_id}/{job.run_name}/seed_{seed}"
        with open_trackers(job.tensorboard, job.wandb, name, config) as tracker:
            tracker.log_history(history, column=col)


def summarise(history: dict, col: int) -> dict[str, Any]:
    """The summary of one run's per-round ``history`` (column ``col``).

    The collapse metrics read the policy mean's ``true_utility`` where the optimiser records it
    (white-box) and the sampled responses' ``sample_true_utility`` otherwise (SB3); the summary
    says which in ``utility_of``.
    """
    sampled = "true_utility" not in history
    prefix = "sample_" if sampled else ""
    out: dict[str, Any] = {"utility_of": "policy samples" if sampled else "policy mean"}
    out.update(results.summarise_history(history[f"{prefix}true_utility"][:, col]))
    last = {k: float(v[-1, col]) for k, v in history.items()}
    out.update(
        final_proxy_reward=last[f"{prefix}proxy_reward"],
        final_gap=last[f"{prefix}gap"],
        final_rm_error=last["rm_error"],
        final_signal_norm=last.get("signal_norm", float("nan")),
        final_noise_norm=last.get("noise_norm", float("nan")),
        labels_used=int(last["labels_used"]),
        oracle_queries=int(last["oracle_queries"]),
        oracle_grad_queries=int(last.get("oracle_grad_queries", 0)),
        oracle_value_equivalents=int(last.get("oracle_value_equivalents", last["oracle_queries"])),
    )
    # every call on the labeler: the RM's labels plus the agent's queries (as value queries)
    out["labeler_calls"] = out["labels_used"] + out["oracle_value_equivalents"]
    for key, v in history.items():  # optional columns (SB3 runs, contextual env)
        if key.startswith("eval_"):
            out[key] = float(v[-1, col])
        elif key.startswith("sample_true_utility_"):  # per-cluster: mean of the last 5 %
            tail = v[-max(1, len(v) // 20) :, col]
            seen = [x for x in tail.tolist() if x == x]  # drop NaN rounds
            out[f"final_{key}"] = sum(seen) / len(seen) if seen else float("nan")
    return out


def job_cost(job: Job) -> float:
    """Estimated compute of a job, from the agent's declared ``cost`` (for scheduling)."""
    from agents import registry

    steps = job.agent_config.get("inner_steps", 1) + 1
    return job.rounds * steps * registry.get(job.agent).cost


def group_jobs(jobs: list[Job], n_workers: int) -> list[list[Job]]:
    """The jobs in units of work, longest first: jobs with one :func:`batch_key` share a unit
    (one batched program), split into up to ``n_workers`` units of similar cost when there are
    fewer keys than workers; never two jobs of one run folder name in a unit (their seeds were
    split into jobs on purpose: ``--batch-size``, ``--jobs``)."""
    keyed: dict[str, list[Job]] = {}
    units: list[list[Job]] = []
    for job in jobs:
        key = batch_key(job)
        if key is None:
            units.append([job])
        else:
            keyed.setdefault(key, []).append(job)
    per_key = max(1, -(-n_workers // max(1, len(keyed) + len(units))))
    for group in keyed.values():
        bins: list[list[Job]] = [[] for _ in range(min(per_key, len(group)))]
        for job in sorted(group, key=job_cost, reverse=True):
            free = [b for b in bins if all(j.run_name != job.run_name for j in b)]
            if not free:
                free = [[]]
                bins.append(free[0])
            min(free, key=lambda b: sum(map(job_cost, b))).append(job)
        units += [b for b in bins if b]
    return sorted(units, key=lambda u: sum(map(job_cost, u)), reverse=True)


def execute(
    jobs: list[Job], n_workers: int, show_progress: bool = True, together: bool = True
) -> list[dict[str, Any]]:
    """Run jobs in-process (1 worker) or in a spawn process pool, with one progress bar.

    ``together``: jobs that can share a batched program run in one (:func:`group_jobs`); the
    numbers are the same either way. Returns one outcome per job.
    """
    from tqdm import tqdm

    units = group_jobs(jobs, n_workers) if together else [[job] for job in jobs]
    total = sum(j.rounds * len(j.seeds) for j in jobs)
    bar = tqdm(total=total, unit="round", disable=not show_progress, dynamic_ncols=True)
    out: list[dict[str, Any]] = []
    try:
        if n_workers <= 1 or len(units) <= 1:
            for unit in units:
                names = "+".join(dict.fromkeys(job.agent for job in unit))
                bar.set_description(f"{names} seeds {unit[0].seeds[0]}..{unit[0].seeds[-1]}")
                out.extend(run_jobs(unit, progress=bar.update))
            return out
        # a plain queue handed to the workers when they start (no manager process, which would
        # outlive a SIGKILLed parent); the workers die with the parent (_die_with_parent)
        ctx = mp.get_context("spawn")
        queue = ctx.Queue()

        def drain() -> None:
            while True:
                try:
                    bar.update(queue.get_nowait())
                except Empty:
                    return

        with ProcessPoolExecutor(
            max_workers=n_workers,
            mp_context=ctx,
            initializer=_init_worker,
            initargs=(queue, os.getpid()),
        ) as pool:
            futures = {pool.submit(run_jobs, unit) for unit in units}
            while futures:
                finished, futures = wait(futures, timeout=0.2, return_when=FIRST_COMPLETED)
                drain()
                for f in finished:
                    out.extend(f.result())
        drain()
        queue.close()
        return out
    finally:
        bar.close()


def warn_renamed_flags(argv: list[str]) -> None:
    """One stderr line for each flag spelled as in earlier releases (still accepted)."""
    if any(a == "--optimizer" or a.startswith("--optimizer=") for a in argv):
        print("warning: --optimizer is now --policy-optimizer", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m baselines.run",
        description="Run an agent on an iterative-RLHF environment over several seeds.",
    )
    from agents import registry

    p.add_argument(
        "--agent",
        metavar="{" + ",".join(registry.names()) + "} or module:Class",
        help="; ".join(
            f"{n}: {(c.__doc__ or '').strip().splitlines()[0]}" for n, c in registry.BUILTIN.items()
        )
        + "; or module:Class for an agent of your own (a subclass of agents.Agent)",
    )
    p.add_argument(
        "--policy-optimizer",
        "--optimizer",  # the name of earlier releases
        dest="policy_optimizer",
        default="whitebox",
        help="whitebox (the paper's gradient agents, seeds batched; default) or an SB3 "
        "algorithm: ppo, sac, a2c (the agent becomes a reward wrapper, or for kl a reward "
        "callback, ppo/a2c only; hyperparameters from "
        "the env's sb3 section in baselines/configs/whitebox.yaml)",
    )
    p.add_argument("--env", default=DEFAULT_ENV, help=f"registered env id (default {DEFAULT_ENV})")
    p.add_argument("--seeds", default="0-9", help="seeds: 0-9, 3, 0,2,5 or 0-4,10-12 (default 0-9)")
    p.add_argument(
        "--rounds", type=int, default=None, help="RM rounds per run (default: per-env YAML)"
    )
    p.add_argument(
        "--env-kwargs",
        nargs="*",
        metavar="K=V",
        help="env arguments, e.g. feedback=preference label_noise=0.5 (values read as YAML)",
    )
    p.add_argument(
        "--agent-kwargs",
        nargs="*",
        metavar="K=V",
        help="agent config fields, e.g. fpo_gamma=0.2 policy_lr=0.01 (override the per-env YAML)",
    )
    p.add_argument(
        "--sb3-kwargs",
        nargs="*",
        metavar="K=V",
        help="SB3 algorithm arguments, e.g. ent_coef=0.01 learning_rate=3e-4 (override the "
        "env's sb3 section in the YAML; with --policy-optimizer ppo, sac or a2c)",
    )
    p.add_argument("--jobs", type=int, default=1, help="parallel worker processes (default 1)")
    p.add_argument(
        "--batch-size",
        type=int,
        default=10,
        help="max seeds simulated together as one batched program (default 10)",
    )
    p.add_argument(
        "--out", default=None, help="output folder (default runs/; runs/replay/ with --from)"
    )
    p.add_argument("--force", action="store_true", help="redo runs that already finished")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--quiet", action="store_true", help="no result table at the end")
    p.add_argument(
        "--from",
        dest="replay",
        metavar="CONFIG",
        help="rerun exactly the run recorded in a run folder's config.json and compare its "
        "metrics.csv with the recorded one (refused if the code hash differs)",
    )
    p.add_argument(
        "--any-code",
        action="store_true",
        help="with --from: replay even if the run was made by other code (to check that "
        "this code reproduces it)",
    )
    p.add_argument(
        "--tensorboard",
        metavar="DIR",
        help="also write per-round metrics as TensorBoard events under DIR (SB3 runs: also "
        "SB3's own logs); needs pip install 'rlhf-blindspot-gym[tensorboard]'",
    )
    p.add_argument(
        "--wandb",
        metavar="PROJECT",
        help="also log per-round metrics to Weights & Biases (needs wandb; WANDB_MODE=offline "
        "works without an account)",
    )
    add_limit_flags(p)
    return p


def add_batch_flag(p: argparse.ArgumentParser) -> None:
    """``--no-batch-agents``: each agent's jobs in a program of their own (same numbers)."""
    p.add_argument(
        "--no-batch-agents",
        dest="batch_agents",
        action="store_false",
        help="run each agent's jobs in a program of their own instead of sharing one batched "
        "env with the other agents of the same env settings (same results, more env work)",
    )


def add_limit_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--max-runs",
        type=int,
        default=MAX_RUNS,
        help=f"refuse commands of more run folders than this (default {MAX_RUNS})",
    )
    p.add_argument(
        "--max-rounds",
        type=int,
        default=MAX_ROUNDS,
        help=f"refuse runs of more RM rounds than this (default {MAX_ROUNDS:,})",
    )


def check_limits(args: argparse.Namespace) -> None:
    for flag in ("max_runs", "max_rounds"):
        if getattr(args, flag) < 1:
            raise CLIError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")


REPLAY_FORBIDS = ("agent", "env_kwargs", "agent_kwargs", "sb3_kwargs", "rounds")


def replay_args(args: argparse.Namespace) -> tuple[dict[str, Any], Path]:
    """The recorded settings of ``--from CONFIG``; one-line errors for anything that would
    not reproduce it (unreadable file, other code, flags that would change the run)."""
    path = Path(args.replay)
    given = [f"--{k.replace('_', '-')}" for k in REPLAY_FORBIDS if getattr(args, k) is not None]
    if args.env != DEFAULT_ENV:
        given.append("--env")
    if args.policy_optimizer != "whitebox":
        given.append("--policy-optimizer")
    if given:
        raise CLIError(f"--from replays a run as recorded; drop {', '.join(given)}")
    try:
        cfg = results.read_json(path)
        keys = ("env_id", "env_kwargs", "agent", "run_name", "agent_config", "rounds", "seed")
        missing = [k for k in (*keys, "config_hash", "code_hash") if k not in cfg]
    except (OSError, ValueError, TypeError) as e:
        raise CLIError(f"--from: cannot read {path}: {type(e).__name__}") from None
    if missing:
        raise CLIError(f"--from: {path} is not a run's config.json (no {', '.join(missing)})")
    here = results.code_hash()
    if cfg["code_hash"] != here and args.any_code:
        print(
            f"note: {path} was made by code {cfg['code_hash']}, this checkout's is {here}: "
            "checking whether this code reproduces it",
            file=sys.stderr,
        )
    elif cfg["code_hash"] != here:
        raise CLIError(
            f"--from: {path} was made by code {cfg['code_hash']} (git commit "
            f"{str(cfg.get('git_commit', 'unknown'))[:12]}); this checkout's code is {here}: "
            "check out that commit to replay it"
        )
    return cfg, path


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        warn_renamed_flags(sys.argv[1:] if argv is None else argv)
        if args.rounds is not None and args.rounds < 1:
            raise CLIError(f"--rounds must be >= 1, got {args.rounds}")
        if args.jobs < 1:
            raise CLIError(f"--jobs must be >= 1, got {args.jobs}")
        if args.batch_size < 1:
            raise CLIError(f"--batch-size must be >= 1, got {args.batch_size}")
        check_limits(args)
        recorded = None
        if args.replay:
            recorded, source = replay_args(args)
            args.out = args.out or str(Path("runs") / "replay")
            jobs, skipped = replay_plan(recorded, args)
        else:
            if args.agent is None:
                raise CLIError("--agent is required (or --from CONFIG to replay a run)")
            args.out = args.out or "runs"
            jobs, skipped = resolve(args)
        try:
            results.check_writable(args.out)
        except ValueError as e:
            raise CLIError(str(e)) from None
        check_trackers(args)
    except CLIError as e:
        print(f"python -m baselines.run: error: {e}", file=sys.stderr)
        return 2
    for job in jobs:
        job.tensorboard, job.wandb = args.tensorboard, args.wandb
    if skipped:
        print(f"skipping {len(skipped)} finished run(s) (use --force to redo)", file=sys.stderr)
    code = 0
    if jobs:
        import torch

        torch.set_num_threads(1)
        outcomes = execute(jobs, args.jobs, show_progress=not args.no_progress)
        code = report_outcomes(outcomes, args.out)
    if recorded is not None:
        return code or compare_replay(recorded, source, args.out)
    if not args.quiet:
        from baselines.report import print_result

        folders = [
            results.run_dir(args.out, args.env, j.run_name, s) for j in jobs for s in j.seeds
        ]
        folders += [results.run_dir(args.out, args.env, name, s) for name, s in skipped]
        print_result(sorted(folders), args.out)
    return code


def replay_plan(cfg: dict[str, Any], args: argparse.Namespace):
    """Plan the recorded run again; its settings must hash to the recorded ``config_hash``."""
    run_name = cfg["run_name"]
    optimizer = cfg.get("policy_optimizer", "whitebox")
    jobs, skipped = plan(
        env_id=cfg["env_id"],
        agent=cfg["agent"],
        seeds=[int(cfg["seed"])],
        rounds=cfg["rounds"],
        env_kwargs=cfg["env_kwargs"],
        agent_kwargs=cfg["agent_config"],
        out=args.out,
        force=args.force,
        tag=run_name.split("@", 1)[1] if "@" in run_name else "",
        policy_optimizer=optimizer,
        sb3_kwargs=cfg.get("hyperparams") if optimizer != "whitebox" else None,
        max_rounds=max(args.max_rounds, int(cfg["rounds"])),
    )
    digest = next(iter(jobs[0].digests.values())) if jobs else None
    if digest is not None and digest != cfg["config_hash"]:
        raise CLIError("--from: the recorded settings no longer hash to the recorded config_hash")
    return jobs, skipped


def compare_replay(cfg: dict[str, Any], source: Path, out: str) -> int:
    """0 if the replay's metrics.csv equals the recorded one byte for byte, else 1."""
    mine = results.run_dir(out, cfg["env_id"], cfg["run_name"], int(cfg["seed"])) / "metrics.csv"
    theirs = source.parent / "metrics.csv"
    if not theirs.exists():
        print(f"replayed into {mine.parent}; {theirs} is missing, nothing to compare")
        return 1
    same = mine.exists() and mine.read_bytes() == theirs.read_bytes()
    verdict = "reproduces" if same else "DIFFERS FROM"
    print(f"replay {verdict} {theirs} byte for byte -> {mine}")
    return 0 if same else 1


def check_trackers(args: argparse.Namespace) -> None:
    """Fail before any compute if a requested logging backend is missing."""
    if args.tensorboard is None and args.wandb is None:
        return
    import importlib.util

    if args.tensorboard is not None and importlib.util.find_spec("tensorboard") is None:
        raise CLIError(
            "--tensorboard needs the tensorboard package: pip install "
            "'rlhf-blindspot-gym[tensorboard]'"
        )
    if args.wandb is not None and importlib.util.find_spec("wandb") is None:
        raise CLIError("--wandb needs the wandb package: pip install wandb")


def report_outcomes(outcomes: list[dict[str, Any]], out: str | Path) -> int:
    """Print what the jobs did; 0 if every run this command owned finished, else 1."""
    n_runs = sum(len(o["seeds"]) for o in outcomes)
    failed = sum(len(o.get("failed", [])) for o in outcomes)
    print(f"{n_runs - failed}/{n_runs} runs finished -> {out}")
    for o in outcomes:
        if o.get("failed"):
            print(f"  {o['status']}: seeds {o['failed']}: {o['reason']}", file=sys.stderr)
    busy = [s for o in outcomes for s in o.get("busy", [])]
    elsewhere = [s for o in outcomes for s in o.get("done_elsewhere", [])]
    if elsewhere:
        print(f"  {len(elsewhere)} run(s) finished by another process meanwhile", file=sys.stderr)
    if busy:
        print(
            f"  {len(busy)} run(s) left to another process writing them now (seeds {busy}); "
            "rerun this command after it ends to check them",
            file=sys.stderr,
        )
    return 1 if failed or busy else 0


if __name__ == "__main__":
    sys.exit(main())
