"""Running planned jobs: run-folder locks, batched white-box programs, SB3 runs, a process pool
(each run's ``metrics.csv`` the same bytes however the jobs are grouped or run)."""

from __future__ import annotations

import multiprocessing as mp
import os
import re
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from queue import Empty
from typing import Any

from baselines import results
from baselines.plan import CLIError, Job

_progress_queue = None

#: seconds to wait for a Ray cluster named by --address
RAY_CONNECT_TIMEOUT = 30.0


def _init_worker(queue, parent: int | None = None, secret: bytes | None = None) -> None:
    global _progress_queue
    _progress_queue = queue
    from baselines.judge import die_with_parent

    die_with_parent(parent)
    if secret is not None:  # the hidden split's, handed over outside the environment
        from rlhf_envs import families

        families.set_secret(secret)


class _Progress:
    """Rounds done, reported in lumps of at least 50 (``report``: ``None`` reports nothing)."""

    def __init__(self, report) -> None:
        self.report, self.pending, self.sent = report, 0, 0

    def add(self, n: int) -> None:
        self.pending += n
        if self.report is not None and self.pending >= 50:
            self.report(self.pending)
            self.sent, self.pending = self.sent + self.pending, 0

    def per_round(self, n: int):
        """A round callback that counts ``n`` rounds (one per seed) each call."""
        return lambda _row: self.add(n)

    def settle(self, total: int) -> None:
        """Make the rounds reported ``total``: the rest, rounds a stop left unrun, or less for
        rounds that a rerun counts again."""
        if self.report is not None and total != self.sent:
            self.report(total - self.sent)
        self.sent, self.pending = total, 0


def run_jobs(jobs: list[Job], progress=None) -> list[dict[str, Any]]:
    """Run jobs and write their run folders; one outcome per job. Never raises: failures are
    recorded in the run folders. Each seed's folder is locked for the jobs' duration
    (:func:`_lock_seeds`); white-box jobs of one :func:`batch_key` share one program, and if it
    fails each job reruns alone, so a failure is recorded against its own runs only."""
    import torch

    import rlhf_envs  # noqa: F401  (registers the envs in a fresh worker)

    torch.set_num_threads(1)
    report = progress or (_progress_queue.put if _progress_queue is not None else None)
    held = [_lock_seeds(job) for job in jobs]
    try:
        todo = [(job, h[1]) for job, h in zip(jobs, held, strict=True) if h[1]]
        keys = {batch_key(job) for job, _ in todo}
        shared = len(todo) > 1 and len(keys) == 1 and None not in keys
        done = _run_white_box(todo, report) if shared else {}
        for job, seeds in todo:
            if id(job) not in done:
                run = _run_white_box if job.policy_optimizer == "whitebox" else _run_sb3
                done.update(run([(job, seeds)], report))
        outcomes = []
        for job, (_, seeds, busy, elsewhere) in zip(jobs, held, strict=True):
            outcome = done[id(job)] if seeds else _outcome(seeds, "ok", "", 0.0)
            folders = [str(results.run_dir(job.out, job.env_id, job.run_name, s)) for s in busy]
            outcomes.append(
                {**outcome, "busy": busy, "busy_folders": folders, "done_elsewhere": elsewhere}
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
        if not job.force and results.run_state(folder, job.digest(seed))[0] == "done":
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


def _outcome(
    seeds: list[int], status: str, reason: str, wall: float, failed: list[int] | None = None
) -> dict[str, Any]:
    return dict(seeds=seeds, status=status, reason=reason, wall=wall, failed=failed or [])


def _record_failure(job: Job, seeds, batch, wall: float, error: BaseException) -> dict[str, Any]:
    """Write ``seeds``' folders as ended by ``error`` (:func:`results.failure`); the job's outcome."""
    for seed in seeds:
        results.write_run(job, seed, batch, wall / len(batch), wall, error)
    return _outcome(batch, *results.failure(error), wall, list(seeds))


def _run_white_box(todo: list[tuple[Job, list[int]]], progress) -> dict[int, dict[str, Any]]:
    """Run white-box jobs (locked seeds each) side by side on one batched env
    (:func:`agents.whitebox.run_rounds`; a job alone is a group of one), writing their folders;
    ``{id(job): outcome}``. A diverging agent is recorded as stopped while the others go on. A
    group whose program fails returns ``{}``; a job whose folders fail to be written is left out
    (the caller reruns each alone); a job alone records its failure.
    """
    import gymnasium as gym

    from agents.whitebox import run_rounds
    from baselines.judge import remote_seat

    alone = len(todo) == 1
    first = todo[0][0]
    counter = _Progress(progress)
    all_seeds = [s for _, seeds in todo for s in seeds]
    start = time.perf_counter()
    stopped: dict[int, BaseException] = {}  # diverged agents stop, the others go on
    seats = []
    try:
        env = gym.make_vec(first.env_id, len(all_seeds), **first.env_kwargs)  # the batched env
        env.reset(seed=list(all_seeds))
        lo = 0
        for job, seeds in todo:
            rows = slice(lo, lo + len(seeds))
            seats.append(remote_seat(env, job, seeds, rows, counter.per_round(len(seeds))))
            lo += len(seeds)
        histories = run_rounds(env, seats, first.rounds, stopped)
    except Exception as e:  # noqa: BLE001  (recorded in the run folders; the sweep goes on)
        if not alone:
            counter.settle(0)  # each job reruns alone and counts its rounds again
            return {}
        histories, stopped = [None], {0: e}
    finally:
        for seat in seats:
            seat.process.close()
    wall = time.perf_counter() - start
    names = None if alone else [job.run_name for job, _ in todo]
    done: dict[int, dict[str, Any]] = {}
    for k, ((job, seeds), history) in enumerate(zip(todo, histories, strict=True)):
        written: list[int] = []
        try:
            if k in stopped:
                done[id(job)] = _record_failure(job, seeds, seeds, wall, stopped[k])
                continue
            for i, seed in enumerate(seeds):
                per_run = wall / len(all_seeds)
                results.write_run(job, seed, seeds, per_run, wall, history, i, shared=names)
                written.append(seed)
            done[id(job)] = _outcome(seeds, "ok", "", wall)
        except Exception as e:  # noqa: BLE001  (a group's job is run again on its own)
            if alone:
                rest = [s for s in seeds if s not in written]
                done[id(job)] = _record_failure(job, rest, seeds, wall, e)
    counter.settle(sum(job.rounds * len(seeds) for job, seeds in todo if id(job) in done))
    return done


def _run_sb3(todo: list[tuple[Job, list[int]]], progress) -> dict[int, dict[str, Any]]:
    """Run one SB3 job, a seed at a time, each written as soon as it finishes."""
    from baselines.sb3_runner import learn_sb3

    ((job, seeds),) = todo
    counter = _Progress(progress)
    start = time.perf_counter()
    written: list[int] = []
    try:
        for seed in seeds:
            t0 = time.perf_counter()
            h = learn_sb3(job, seed, counter.per_round(1))
            took = time.perf_counter() - t0
            results.write_run(job, seed, seeds, took, time.perf_counter() - start, h)
            written.append(seed)
        outcome = _outcome(seeds, "ok", "", time.perf_counter() - start)
    except Exception as e:  # noqa: BLE001  (recorded in the run folders; the sweep goes on)
        rest = [s for s in seeds if s not in written]
        outcome = _record_failure(job, rest, seeds, time.perf_counter() - start, e)
    counter.settle(job.rounds * len(seeds))
    return {id(job): outcome}


def job_cost(job: Job) -> float:
    """Estimated compute of a job, from the agent's declared ``cost`` (for scheduling)."""
    from baselines.judge import agent_class

    steps = job.agent_config.get("inner_steps", 1) + 1
    return job.rounds * steps * agent_class(job.agent).cost


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


def units_of(jobs: list[Job], n_workers: int, together: bool) -> list[list[Job]]:
    """The units of work, longest first: :func:`group_jobs`, or one job each without ``together``."""
    jobs = sorted(jobs, key=job_cost, reverse=True)
    return group_jobs(jobs, n_workers) if together else [[job] for job in jobs]


def execute(
    jobs: list[Job], n_workers: int, show_progress: bool = True, together: bool = True
) -> list[dict[str, Any]]:
    """Run jobs in-process (1 worker) or in a spawn process pool, with one progress bar; one outcome
    per job. ``together``: jobs that can share a batched program run in one (:func:`group_jobs`; the
    same numbers either way).
    """
    from tqdm import tqdm

    import baselines.judge  # noqa: F401  (takes the hidden split's secret, at import)
    from rlhf_envs import families

    units = units_of(jobs, n_workers, together)
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
        # outlive a SIGKILLed parent); the workers die with the parent (judge.die_with_parent)
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
            initargs=(queue, os.getpid(), families.secret()),
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


def execute_ray(
    jobs: list[Job], address: str | None, n_workers: int, together: bool = True
) -> list[dict[str, Any]]:
    """One Ray task per unit of jobs (:func:`baselines.execute.group_jobs`; one job per task
    without ``together``), retried if its worker dies; returns the jobs' outcomes."""
    if any("hidden" in str(job.env_kwargs.get("family", "")) for job in jobs):
        raise CLIError("--backend ray: hidden-split runs need the local backend (the secret)")
    try:
        import ray
    except ImportError:
        raise CLIError("--backend ray needs Ray: pip install -e '.[ray]'") from None
    from tqdm import tqdm

    if address:
        connect_ray(ray, address, RAY_CONNECT_TIMEOUT)
    else:  # a local instance on this machine only
        ray.init(num_cpus=n_workers, include_dashboard=False, log_to_driver=False)
    try:
        task = ray.remote(num_cpus=1, max_retries=3)(run_jobs)
        pending = [task.remote(unit) for unit in units_of(jobs, n_workers, together)]
        outcomes = []
        with tqdm(total=len(jobs), unit="job") as bar:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                for done in ray.get(ready):
                    outcomes += done
                    bar.update(len(done))
        return outcomes
    finally:
        ray.shutdown()


def connect_ray(ray, address: str, timeout: float) -> None:
    """``ray.init(address=...)``, or a one-line error within ``timeout`` seconds.

    A ``host:port`` address is probed by a plain TCP connect first (an unreachable port fails at
    once); ``ray.init`` runs in a daemon thread, so a cluster that accepts but never answers cannot
    hang the sweep.
    """
    import socket
    import threading

    if m := re.fullmatch(r"(?:ray://)?\[?([^\]]+?)\]?:(\d+)", address.strip()):
        try:
            socket.create_connection((m[1], int(m[2])), timeout=min(timeout, 10.0)).close()
        except OSError as e:
            raise CLIError(
                f"--address: cannot reach a Ray cluster at {address} ({e.strerror or e})"
            ) from None
    error: list[BaseException] = []

    def init() -> None:
        try:
            ray.init(address=address, log_to_driver=False)
        except BaseException as e:  # reported in the caller's thread
            error.append(e)

    thread = threading.Thread(target=init, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise CLIError(f"--address: no answer from a Ray cluster at {address} in {timeout:.0f} s")
    if error:
        msg = str(error[0]).strip().splitlines()[0][:200] if str(error[0]).strip() else ""
        raise CLIError(
            f"--address: cannot connect to Ray at {address}: {type(error[0]).__name__} {msg}"
        )
