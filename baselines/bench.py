"""Speed of the suite, measured in one run: env steps/s and seconds per agent-run.

For each env: single-env steps/s with random actions (RM retraining included); on the blind-spot
envs, each white-box agent's seconds per agent-run with ``--seeds`` seeds batched, one seed alone
(measured on ``--single-rounds``, scaled), in the judge's process and against naive, then a family
row over a list of env configs (:func:`family_seconds`); then the wall time of one SB3 run per
agent of ``--agents`` relative to naive. ``--float32`` adds a float32-follower column. Medians over
``--repeats``; the machine is shared (its load average is printed), so compare the ratios,
measured side by side, not absolute times across runs (README, "Speed").
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import time

import gymnasium as gym
import numpy as np
import torch

import rlhf_envs
from agents import registry
from baselines import cli, report, results
from baselines.judge import agent_class
from baselines.plan import CLIError, load_defaults, yaml_settings


def env_steps_per_second(env_id: str, steps: int, repeats: int) -> float:
    rates = []
    for r in range(repeats):
        env = gym.make(env_id)
        env.reset(seed=r)
        space = env.action_space
        if isinstance(space, gym.spaces.Box):
            # moderate responses: the full box (+-10 on 50 dims) makes the linear RM's SGD
            # diverge, which the env reports as an error
            rng = np.random.default_rng(r)
            actions = rng.uniform(-3, 3, size=(steps, *space.shape)).astype(space.dtype)
        else:
            space.seed(r)
            actions = [space.sample() for _ in range(steps)]
        t = time.perf_counter()
        for a in actions:
            env.step(a)
            env.reset()
        rates.append(steps / (time.perf_counter() - t))
    return statistics.median(rates)


def together_seconds(
    env_id: str,
    agents: list[str],
    seeds: list[int],
    rounds: int,
    repeats: int,
    env_kwargs: dict | None = None,
    judged: bool = True,
) -> float:
    """Median wall seconds of all ``agents`` (each over ``seeds``, the env's YAML settings) for
    ``rounds`` rounds on one batched env, built beforehand, as the harness runs agents of one env
    config: ``judged``, each agent in its own process, started within the time
    (:func:`baselines.judge.remote_seat`); else all in this process
    (:func:`~agents.whitebox.learn_together`)."""
    from agents.whitebox import learn_together, run_rounds
    from baselines.judge import remote_seat
    from baselines.plan import Job

    times = []
    for _ in range(repeats):
        made = [
            cls(cls.config_cls(**{**yaml_settings(env_id, cls), "rounds": rounds}), seed=seeds)
            for cls in map(agent_class if judged else registry.get, agents)
        ]
        env = gym.make_vec(env_id, len(seeds) * len(agents), **(env_kwargs or {}))
        env.reset(seed=seeds * len(agents))
        t = time.perf_counter()
        if judged:
            n, seats = len(seeds), []
            for i, (a, m) in enumerate(zip(agents, made, strict=True)):
                reads = ",".join(m.declared_reads())
                job = Job(env_id, a, seeds, rounds, {}, m.config.to_dict(), "", "", reads=reads)
                seats.append(remote_seat(env, job, seeds, slice(i * n, (i + 1) * n)))
            run_rounds(env, seats, rounds)
            for seat in seats:
                seat.process.close()
        else:
            learn_together(made, env, rounds)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def sb3_seconds(
    env_id: str, agent: str, algo: str, rounds: int, repeats: int, judged: bool = True
) -> float:
    """Median seconds of one SB3 run (one seed) of ``rounds`` RM rounds: ``judged``, as the
    harness runs it (the agent and its algorithm in their own process, the judge recording);
    else the agent-wrapped env and the algorithm in this process, unrecorded."""
    from agents.wrappers import AgentRewardWrapper
    from baselines.judge import algorithm
    from baselines.plan import Job
    from baselines.sb3_runner import learn_sb3

    cls = agent_class(agent)
    cfg = cls(cls.config_cls(**yaml_settings(env_id, cls, algo))).config
    hyper = load_defaults(env_id).get("sb3", {}).get(algo, {})
    reads = ",".join(cls(cfg).declared_reads(True))
    job = Job(env_id, agent, [], rounds, {}, cfg.to_dict(), "", "", algo, hyper, reads=reads)
    times = []
    for r in range(repeats):
        t = time.perf_counter()
        if judged:
            learn_sb3(job, r, eval_responses=1)
        else:
            env = AgentRewardWrapper(gym.make(env_id), cls(cfg, seed=r))
            core = env.unwrapped.core
            model = algorithm(algo)("MlpPolicy", env, seed=r, device="cpu", **hyper)
            model.learn(10**9, callback=lambda _l, _g, core=core: core.round < rounds)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def family_seconds(
    env_id: str, agents: list[str], configs: list[dict], seeds: list[int], rounds: int, repeats: int
) -> float:
    """Wall seconds per agent-run of ``agents`` in one program over every env config of ``configs``
    (env-kwarg dicts, e.g. a family's test split), each config's seeds one batched program: the sum
    over configs of :func:`together_seconds` (medians) over the agent-runs."""
    total = sum(together_seconds(env_id, agents, seeds, rounds, repeats, cfg) for cfg in configs)
    return total / (len(configs) * len(seeds) * len(agents))


def speed_table(env_id: str, args, configs: list[dict], measured: int, rounds: int, extras=None):
    """Print each agent's seconds per agent-run over the env ``configs`` (:func:`family_seconds` on
    ``measured`` rounds, scaled to ``rounds``) and its ratio to naive; with several agents, a row of
    all of them in one program per config (as the harness runs them) and its speed-up over their
    separate programs. ``extras``: more columns, ``{header: cell(agent, seconds)}``."""
    seeds, extras = list(range(args.seeds)), extras or {}

    def seconds(agents: list[str]) -> float:
        per_run = family_seconds(env_id, agents, configs, seeds, measured, args.repeats)
        return per_run * rounds / measured

    sec = {a: seconds([a]) for a in args.agents}
    base = sec.get(registry.REFERENCE, next(iter(sec.values())))
    rows = [
        [a, f"{s:.3f}", f"{s / base:.2f}x", *(f(a, s) for f in extras.values())]
        for a, s in sec.items()
    ]
    if len(args.agents) > 1:
        both = seconds(args.agents)
        rows.append(["all agents, one program per config", f"{both:.3f}", f"{both / base:.2f}x"])
        rows[-1] += ["-"] * len(extras)
    print("\n".join(report.markdown_table(["agent", "s/agent-run", "x naive", *extras], rows)))
    if len(args.agents) > 1:
        ratio = sum(sec.values()) / len(sec) / both
        print(f"\nagents sharing one program per config: {ratio:.2f}x the separate programs")
    print()


def white_box_table(env_id: str, args: argparse.Namespace, rounds: int) -> None:
    """Print seconds per white-box agent-run on the env's own config (:func:`speed_table`), with
    one seed alone (measured on ``--single-rounds``, scaled) and with ``--float32``."""
    single, seeds = min(rounds, args.single_rounds), list(range(args.seeds))

    def alone(agent: str, sec: float) -> str:
        t = together_seconds(env_id, [agent], [0], single, args.repeats) * rounds / single
        return f"{t:.3f} ({t / sec:.1f}x)"

    def float32(agent: str, sec: float) -> str:
        t = family_seconds(env_id, [agent], [{"dtype": "float32"}], seeds, rounds, args.repeats)
        return f"{t:.3f} ({sec / t:.2f}x)"

    def in_process(agent: str, sec: float) -> str:
        t = together_seconds(env_id, [agent], seeds, rounds, args.repeats, judged=False)
        t /= len(seeds)
        return f"{t:.3f} ({sec / t:.2f}x)"

    extras = {
        "s/agent-run alone (batching speed-up)": alone,
        "s/agent-run in one process (judge's cost)": in_process,
    }
    if args.float32:
        extras["s/agent-run float32 (x faster)"] = float32
    speed_table(env_id, args, [{}], rounds, rounds, extras)


def family_grid(items: list[str]) -> list[dict]:
    """``["target_value=2,2.5", "utility_width=0.1,0.2"]`` -> the cartesian product as a list
    of env-kwarg dicts (values read as numbers where they are)."""
    axes = []
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key or not values:
            raise CLIError(f"--family: expected KEY=V1,V2,..., got {item!r}")
        axes.append([(key, results._number(v)) for v in values.split(",")])
    return [dict(combo) for combo in itertools.product(*axes)]


def family_configs(env_id: str, args: argparse.Namespace) -> tuple[list[dict], str]:
    """The env configs of the family row and their description: the split ``--family-split``
    of :mod:`rlhf_envs.families` where the env has one, else the grid of ``--family``."""
    if args.family_split:
        try:
            from rlhf_envs import families

            configs = families.configs(env_id, args.family_split)
        except (ImportError, ValueError):
            configs = []
        if configs:
            return configs, f"family split {args.family_split}"
    configs = family_grid(args.family)
    names = ", ".join(",".join(f"{k}={v}" for k, v in c.items()) for c in configs)
    return configs, names


def sb3_table(env_id: str, args: argparse.Namespace) -> None:
    """Print the seconds of one ``--sb3`` run per agent of ``--agents`` that works with it, as the
    harness runs it and in one process, and its ratio to naive."""
    from baselines.sb3_runner import allowed_algos

    algo, ref, rounds = args.sb3, registry.REFERENCE, args.sb3_rounds
    print(f"{algo.upper()} through reward wrappers, {rounds} RM rounds, 1 seed:\n")
    sb3_seconds(env_id, ref, algo, 5, 1)  # warm-up: imports, first compile
    run = [a for a in args.agents if algo in allowed_algos(a)]
    sec = {a: sb3_seconds(env_id, a, algo, rounds, args.repeats) for a in run}
    rows = []
    for a, s in sec.items():
        own = sb3_seconds(env_id, a, algo, rounds, args.repeats, judged=False)
        rows.append(
            [f"{a}+{algo}", f"{s:.2f}", f"{s / sec[ref]:.2f}x", f"{own:.2f} ({s / own:.2f}x)"]
        )
    head = ["agent", "s/run", "x naive", "s/run in one process (judge's cost)"]
    print("\n".join(report.markdown_table(head, rows)))
    print()


def _loadable(name: str) -> bool:
    """Whether ``name`` is an agent given as ``module:Class`` that loads."""
    try:
        return ":" in name and bool(agent_class(name))
    except ValueError:
        return False


def main(argv: list[str] | None = None) -> int:
    p = cli.command("baselines.bench", __doc__, cli.ROUNDS)
    p.add_argument("--envs", nargs="*", default=list(rlhf_envs.ENV_IDS))
    p.add_argument("--agents", nargs="*", default=list(registry.names()))
    p.add_argument(
        "--seeds", type=cli.positive_int, default=10, help="seeds per batched run (default 10)"
    )
    p.add_argument(
        "--single-rounds",
        type=cli.positive_int,
        default=200,
        help="rounds measured for the one-seed runs, scaled up (default 200)",
    )
    p.add_argument("--repeats", type=cli.positive_int, default=3)
    p.add_argument("--steps", type=cli.positive_int, default=2000, help="env steps for steps/s")
    p.add_argument(
        "--sb3",
        default="ppo",
        choices=("ppo", "sac", "a2c", "none"),
        help="SB3 algorithm whose wall time with and without FPO wrappers is compared ('none': skip)",
    )
    p.add_argument("--sb3-rounds", type=cli.positive_int, default=400, help="RM rounds per SB3 run")
    p.add_argument(
        "--family",
        nargs="*",
        default=["target_value=2.0,2.5,3.0", "utility_width=0.1,0.2"],
        metavar="KEY=V1,V2",
        help="family-row env-kwarg grid (default target_value x utility_width: 6); none: no row",
    )
    p.add_argument(
        "--family-split",
        choices=("train", "test"),
        default=None,
        help="family row on this rlhf_envs.families split where the env has one (else --family)",
    )
    p.add_argument(
        "--float32",
        action="store_true",
        help="also time white-box agents with a float32 follower (dtype=float32) beside float64",
    )
    p.add_argument(
        "--family-rounds",
        type=cli.positive_int,
        default=200,
        help="rounds measured per family run, scaled to the env's rounds (default 200)",
    )
    try:
        args = p.parse_args(argv)
        family_grid(args.family)
        for flag, given, known, allowed in (
            ("agents", args.agents, registry.BUILTIN, sorted(registry.names())),
            ("envs", args.envs, rlhf_envs.ENV_IDS, rlhf_envs.ENV_IDS),
        ):
            unknown = [
                x for x in given if x not in known and not (flag == "agents" and _loadable(x))
            ]
            if unknown:
                raise CLIError(f"--{flag}: unknown {unknown}; allowed: {allowed}")
    except CLIError as e:
        return p.fail(e)
    torch.set_num_threads(1)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"torch threads: {torch.get_num_threads()}, repeats: {args.repeats} (medians)")
    print(f"load average (1, 5, 15 min): {load} on {os.cpu_count()} cores\n")
    for env_id in args.envs:
        rounds = args.rounds or load_defaults(env_id).get("rounds", 300)
        sps = env_steps_per_second(env_id, args.steps, args.repeats)
        print(f"## {env_id}: {sps:,.0f} env steps/s (single env, random actions)")
        if env_id in rlhf_envs.BLIND_SPOT_ENV_IDS:
            print(f"rounds per agent-run: {rounds}; batched runs use seeds 0-{args.seeds - 1}\n")
            white_box_table(env_id, args, rounds)
            if args.family or args.family_split:  # on --family-rounds rounds, scaled
                configs, names = family_configs(env_id, args)
                print(f"family sweep: {len(configs)} configs x {args.seeds} seeds ({names})\n")
                speed_table(env_id, args, configs, min(rounds, args.family_rounds), rounds)
        else:
            print("no white-box agents on this env (SB3 agents only)\n")
        discrete = isinstance(gym.make(env_id).action_space, gym.spaces.Discrete)
        if args.sb3 == "sac" and discrete:
            print("SAC needs a Box action space: no SB3 rows on this env\n")
        elif args.sb3 != "none":
            sb3_table(env_id, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
