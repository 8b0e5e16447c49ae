"""Run agents on the suite's environments: one folder per (env, agent, seed).

Examples::

    python -m baselines.run --agent fpo
    python -m baselines.run --agent naive --env RLHFNeuralBlindSpot-v0 --seeds 0-9 --jobs 2
    python -m baselines.run --agent fpo-relaxed --env-kwargs label_noise=0.5 --agent-kwargs fpo_gamma=0.2

The run folders ``OUT/ENV/AGENT/seed_S/``: README, "Agents and harness", and
:func:`baselines.results.write_run`. This module is the command line (and ``--from``, the replay
of a recorded run); the settings are checked and planned in :mod:`baselines.plan` and run in
:mod:`baselines.execute`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from baselines import cli, results
from baselines.execute import execute
from baselines.plan import CLIError, parse_kwargs, parse_seeds, plan
from baselines.tracking import TrackerError, backend

DEFAULT_ENV = "RLHFBlindSpot-v0"


def build_parser() -> argparse.ArgumentParser:
    p = cli.command("baselines.run", __doc__, cli.RERUN, cli.ROUNDS)
    from agents import registry

    p.add_argument(
        "--agent",
        metavar="{" + ",".join(registry.names()) + "} or module:Class",
        help="a built-in agent (--list-agents) or module:Class (your agents.Agent subclass)",
    )
    p.add_argument(
        "--list-agents",
        action="store_true",
        help="print the built-in agents (name, role, what each reads, what it does) and exit",
    )
    p.add_argument(
        "--policy-optimizer",
        default="whitebox",
        help="whitebox (the paper's gradient agents, seeds batched; default) or an SB3 algorithm: "
        "ppo, sac, a2c (the agent becomes a reward wrapper, or for kl a reward callback, ppo/a2c "
        "only; hyperparameters from the env's sb3 section in baselines/configs/whitebox.yaml)",
    )
    p.add_argument("--env", default=DEFAULT_ENV, help=f"registered env id (default {DEFAULT_ENV})")
    p.add_argument("--seeds", default="0-9", help="seeds: 0-9, 3, 0,2,5 or 0-4,10-12 (default 0-9)")
    for flag, what in (
        ("--env-kwargs", "env args (YAML values), e.g. label_noise=0.5"),
        ("--agent-kwargs", "agent config fields, e.g. fpo_gamma=0.2 policy_lr=0.01 (override "
         "the per-env YAML)"),
        ("--sb3-kwargs", "SB3 arguments over the env's YAML sb3 section (ppo, sac, a2c), e.g. "
         "ent_coef=0.01"),
    ):  # fmt: skip
        p.add_argument(flag, nargs="*", metavar="K=V", help=what)
    p.add_argument(
        "--jobs", type=cli.positive_int, default=1, help="parallel worker processes (default 1)"
    )
    p.add_argument(
        "--batch-size",
        type=cli.positive_int,
        default=10,
        help="max seeds simulated together as one batched program (default 10)",
    )
    p.add_argument(
        "--out", default=None, help="output folder (default runs/; runs/replay/ with --from)"
    )
    p.add_argument("--quiet", action="store_true", help="no result table at the end")
    p.add_argument(
        "--from",
        dest="replay",
        metavar="CONFIG",
        help="rerun exactly the run recorded in a run folder's config.json and compare its "
        "metrics.csv with the recorded one (refused if the code hash differs or the folder's "
        "record fails its checks: sealed, in its own folder, summary = its metrics)",
    )
    p.add_argument(
        "--any-code",
        action="store_true",
        help="with --from: replay a run made by other code (to check this code reproduces it)",
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
        help="also log per-round metrics to W&B (needs wandb; WANDB_MODE=offline needs no account)",
    )
    cli.add_limit_flags(p)
    return p


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
    if missing or path.name != "config.json":
        raise CLIError(f"--from: {path} is not a run's config.json (lacks {missing or 'its name'})")
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
    try:  # the record must check itself: sealed, in its own folder, summary = its metrics
        results.check_run(path.parent, ("ok", "stopped", "failed"))
    except (results.RecordError, OSError, ValueError, KeyError, TypeError) as e:
        raise CLIError(f"--from: {path.parent} is refused: {str(e)[:200]}") from None
    args.out = args.out or str(Path("runs") / "replay")
    if Path(args.out).resolve() == path.resolve().parents[3]:
        raise CLIError(f"--from: --out {args.out} would replay {path.parent} into itself")
    return cfg, path


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    try:
        args = p.parse_args(argv)
        if args.list_agents:
            from agents import registry

            print(registry.describe())
            return 0
        recorded = None
        if args.replay:
            recorded, source = replay_args(args)
            jobs, skipped = replay_plan(recorded, args)
        else:
            if args.agent is None:
                raise CLIError("--agent is required (or --from CONFIG to replay a run)")
            args.out = args.out or "runs"
            jobs, skipped = plan(
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
        cli.check_writable(args.out)
        for flag, value in (("--tensorboard", args.tensorboard), ("--wandb", args.wandb)):
            if value is not None:
                backend(flag)  # a missing logging backend fails before any compute
    except (CLIError, TrackerError) as e:
        return p.fail(e)
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
        force=True,  # a replay runs again: never compare with a folder already there
        tag=run_name.split("@", 1)[1] if "@" in run_name else "",
        policy_optimizer=optimizer,
        sb3_kwargs=cfg.get("hyperparams") if optimizer != "whitebox" else None,
        max_rounds=max(args.max_rounds, int(cfg["rounds"])),
    )
    if jobs[0].digest(jobs[0].seeds[0]) != cfg["config_hash"] or jobs[0].run_name != run_name:
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
