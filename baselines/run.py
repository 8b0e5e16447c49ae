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
import re
import sys
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from baselines import results

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
DEFAULT_ENV = "RLHFBlindSpot-v0"


class CLIError(Exception):
    """A usage problem, reported as one line and exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage dump
        raise CLIError(message)


# -- parsing helpers -----------------------------------------------------------------------------
def parse_seeds(text: str) -> list[int]:
    """``"0-9"``, ``"3"``, ``"0,2,5"`` or ``"0-4,10-12"`` -> sorted unique seeds."""
    seeds: set[int] = set()
    for part in str(text).split(","):
        part = part.strip()
        if m := re.fullmatch(r"(\d+)-(\d+)", part):
            lo, hi = int(m[1]), int(m[2])
            if lo > hi:
                raise CLIError(f"--seeds: range {part!r} is empty (start > end)")
            seeds.update(range(lo, hi + 1))
        elif re.fullmatch(r"\d+", part):
            seeds.add(int(part))
        else:
            raise CLIError(f"--seeds: cannot read {part!r}; use e.g. 0-9, 3 or 0,2,5 (ints >= 0)")
    if max(seeds) >= 2**31:
        raise CLIError(f"--seeds must be ints in [0, 2^31), got {text!r}")
    return sorted(seeds)


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

    def __post_init__(self) -> None:
        self.run_name = self.run_name or self.agent


def resolve(args: argparse.Namespace) -> tuple[list[Job], list[tuple[str, int]]]:
    """Validate the CLI arguments and build the pending jobs; returns (jobs, skipped)."""
    return plan(
        env_id=args.env,
        agent=args.agent,
        seeds=parse_seeds(args.seeds),
        rounds=args.rounds,
        env_kwargs=parse_kwargs(args.env_kwargs, "--env-kwargs"),
        agent_kwargs=parse_kwargs(args.agent_kwargs, "--agent-kwargs"),
        out=args.out,
        force=args.force,
        batch_size=args.batch_size,
        jobs=args.jobs,
        policy_optimizer=args.policy_optimizer,
        sb3_kwargs=parse_kwargs(args.sb3_kwargs, "--sb3-kwargs"),
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
        if rounds is None:
            rounds = sb3.get("rounds")
    name = agent_cls.name
    resolved = {**defaults.get("agent", {}), **defaults.get("agents", {}).get(name, {})}
    allowed = agent_cls.config_cls.field_names()
    agent_kwargs = renamed_fields(agent_kwargs)
    unknown = sorted(set(agent_kwargs) - set(allowed))
    if unknown:
        raise CLIError(f"--agent-kwargs: unknown name(s) {unknown}; allowed: {allowed}")
    resolved.update(agent_kwargs)
    rounds = rounds if rounds is not None else defaults.get("rounds")
    if rounds is not None:
        resolved["rounds"] = rounds
    try:
        agent_cfg = agent_cls.config_cls(**resolved)
    except (TypeError, ValueError) as e:
        raise CLIError(f"--agent-kwargs: {e}") from None
    rounds = agent_cfg.rounds
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
        state = results.is_done(folder, digest)
        if state is None and not force:
            raise CLIError(
                f"{folder} holds a finished run with other settings; pass --force to redo it "
                "or choose another --out"
            )
        if state and not force:
            skipped.append((run_name, seed))
            continue
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
                )
            )
    return out_jobs, skipped


_progress_queue = None


def _init_worker(queue) -> None:
    global _progress_queue
    _progress_queue = queue
    _die_with_parent()


def _die_with_parent() -> None:
    """Linux: ask the kernel to kill this worker when the sweep's main process dies, so a
    killed sweep leaves no orphan still writing run folders (best effort elsewhere)."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            import signal

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass


def run_job(job: Job, progress=None) -> dict[str, Any]:
    """Run one batch of seeds and write its run folders. Never raises: failures are recorded."""
    import gymnasium as gym
    import torch

    import rlhf_envs  # noqa: F401
    from agents import Agent, registry

    torch.set_num_threads(1)
    report = progress or (_progress_queue.put if _progress_queue is not None else None)
    start = time.perf_counter()
    status, reason, tb = "ok", "", ""
    columns: list[tuple[dict, int]] = []  # (history, column) per seed
    units = [0]

    def callback(_row, per_round: int = 1) -> None:
        units[0] += per_round
        if report is not None and units[0] >= 50:
            report(units[0])
            units[0] = 0

    try:
        if job.policy_optimizer == "whitebox":
            env = gym.make_vec(
                job.env_id,
                num_envs=len(job.seeds),
                vectorization_mode="vector_entry_point",
                **job.env_kwargs,
            )
            env.reset(seed=list(job.seeds))
            cls = registry.get(job.agent)
            agent = cls(cls.config_cls(**job.agent_config), seed=list(job.seeds))
            n = len(job.seeds)
            # the harness's own loop, even if the agent overrides learn(): it sees the env
            history = Agent.learn(agent, env, job.rounds, lambda row: callback(row, n))
            columns = [(history, i) for i in range(n)]
        else:
            from baselines.sb3_runner import learn_sb3

            for seed in job.seeds:  # SB3 runs one experiment at a time
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
                )
                columns.append((h, 0))
        if report is not None and units[0]:
            report(units[0])
    except FloatingPointError as e:
        status, reason, tb = "stopped", str(e), traceback.format_exc()
        columns = []
    except Exception as e:  # recorded in the run folder; the sweep goes on
        status, reason, tb = "failed", f"{type(e).__name__}: {e}", traceback.format_exc()
        columns = []
    wall = time.perf_counter() - start
    cls = registry.get(job.agent)
    sb3 = job.policy_optimizer != "whitebox"
    reads = cls(cls.config_cls(**job.agent_config)).declared_reads(sb3)
    versions, commit = results.package_versions(), results.git_commit()
    for i, seed in enumerate(job.seeds):
        folder = results.run_dir(job.out, job.env_id, job.run_name, seed)
        results.remove_stale_temps(folder)  # left by a writer killed mid-write
        config = {
            **job.settings[seed],
            "config_hash": job.digests[seed],
            "batched_with": job.seeds,
            "versions": versions,
            "git_commit": commit,
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
            "wall_time_s": wall / len(job.seeds),
            "batch_wall_time_s": wall,
            "reads": ",".join(reads),
        }
        if columns:
            history, col = columns[i]
            results.atomic_write_text(folder / "metrics.csv", results.metrics_csv(history, col))
            summary.update(summarise(history, col))
        else:
            summary["reason"] = reason
            results.atomic_write_text(folder / "error.txt", tb)
        results.atomic_write_json(folder / "summary.json", summary)
    return {"seeds": job.seeds, "status": status, "reason": reason, "wall": wall}


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


def execute(jobs: list[Job], n_workers: int, show_progress: bool = True) -> list[dict[str, Any]]:
    """Run jobs in-process (1 worker) or in a spawn process pool, with one progress bar."""
    from tqdm import tqdm

    total = sum(j.rounds * len(j.seeds) for j in jobs)
    bar = tqdm(total=total, unit="round", disable=not show_progress, dynamic_ncols=True)
    out = []
    try:
        if n_workers <= 1 or len(jobs) <= 1:
            for job in jobs:
                bar.set_description(f"{job.agent} seeds {job.seeds[0]}..{job.seeds[-1]}")
                out.append(run_job(job, progress=bar.update))
            return out
        ctx = mp.get_context("spawn")
        with ctx.Manager() as manager:
            queue = manager.Queue()
            with ProcessPoolExecutor(
                max_workers=n_workers, mp_context=ctx, initializer=_init_worker, initargs=(queue,)
            ) as pool:
                futures = {pool.submit(run_job, j) for j in jobs}
                while futures:
                    finished, futures = wait(futures, timeout=0.2, return_when=FIRST_COMPLETED)
                    while not queue.empty():
                        bar.update(queue.get())
                    out.extend(f.result() for f in finished)
                while not queue.empty():
                    bar.update(queue.get())
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
        required=True,
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
    p.add_argument("--out", default="runs", help="output folder (default runs/)")
    p.add_argument("--force", action="store_true", help="redo runs that already finished")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


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
        jobs, skipped = resolve(args)
    except CLIError as e:
        print(f"python -m baselines.run: error: {e}", file=sys.stderr)
        return 2
    if skipped:
        print(f"skipping {len(skipped)} finished run(s) (use --force to redo)", file=sys.stderr)
    if not jobs:
        return 0
    import torch

    torch.set_num_threads(1)
    outcomes = execute(jobs, args.jobs, show_progress=not args.no_progress)
    bad = [o for o in outcomes if o["status"] != "ok"]
    n_runs = sum(len(o["seeds"]) for o in outcomes)
    print(f"{n_runs - sum(len(o['seeds']) for o in bad)}/{n_runs} runs finished -> {args.out}")
    for o in bad:
        print(f"  {o['status']}: seeds {o['seeds']}: {o['reason']}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
