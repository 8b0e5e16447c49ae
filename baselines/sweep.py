"""Sweeps over envs x agents x seeds x hyperparameter grids, locally or on a Ray cluster.

    python -m baselines.sweep SWEEP.yaml [--backend {local,ray}] [--address ADDR] [--jobs N]
                                         [--out DIR] [--force] [--no-batch-agents]

A sweep file::

    envs: [RLHFBlindSpot-v0, RLHFNeuralBlindSpot-v0]
    agents: [naive, fpo, fpo-relaxed]
    seeds: 0-9                  # or a list
    rounds: 200                 # optional; default per env (baselines/configs/whitebox.yaml)
    env_kwargs: {label_noise: 0.1}
    agent_kwargs: {}
    grid:                       # optional cartesian product; keys env.NAME or agent.NAME
      agent.fpo_gamma: [0.05, 0.1]
    subdir: my-sweep            # optional folder under --out (must stay inside it)
    batch_size: 10
    policy_optimizers: [whitebox]   # optional; or SB3 algorithms: ppo, sac, a2c

An ``agents`` entry may also be a mapping that runs an agent with its own settings under a tag
(``AGENT@TAG``), for some envs only::

    - {agent: kl, tag: strong, envs: [RLHFNeuralBlindSpot-v0], agent_kwargs: {kl_coef: 1.0}}

An entry may also name ``policy_optimizers``. With ``controls: true`` the sweep then adds the
budget-matched controls of every agent that called the labeler beyond its RM's labels
(:func:`budget_controls`) and runs them.

Every (env, agent, grid point) is planned and run as ``baselines.run`` does (grid points go to
``AGENT@k=v,...``; Ray: one task per program, with retries). A restarted sweep redoes only
unfinished runs; a failed run is recorded and the sweep goes on; ``sweep_summary.json`` lists
every run's status.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from baselines import cli, results
from baselines.judge import agent_class
from baselines.plan import MAX_ROUNDS, MAX_RUNS, CLIError, Job, parse_seeds, plan, run_folder_name

KEYS = {"envs", "agents", "seeds", "rounds", "env_kwargs", "agent_kwargs", "grid", "subdir"}
KEYS |= {"batch_size", "policy_optimizers", "controls"}
ENTRY_KEYS = {"agent", "tag", "envs", "env_kwargs", "agent_kwargs", "policy_optimizers"}
_SAFE = re.compile(r"[^A-Za-z0-9_.=,+-]")


def confined(base: Path, sub: str | None) -> Path:
    """``base / sub``, refusing absolute paths and anything that escapes ``base``."""
    base = Path(base).resolve()
    if not sub:
        return base
    if Path(sub).is_absolute():
        raise CLIError(f"subdir must be relative to --out, got {sub!r}")
    path = (base / sub).resolve()
    if path != base and base not in path.parents:
        raise CLIError(f"subdir {sub!r} leaves the output folder {base}")
    return path


def tag_of(point: dict[str, Any]) -> str:
    return _SAFE.sub("_", ",".join(f"{k.split('.', 1)[1]}={v}" for k, v in sorted(point.items())))


def load_sweep(path: Path) -> dict[str, Any]:
    try:
        spec = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise CLIError(f"cannot read sweep file {path}: {type(e).__name__}: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or type(e).__name__
        raise CLIError(f"sweep file {path} is not valid YAML{where}: {problem}") from None
    if not isinstance(spec, dict):
        raise CLIError(f"sweep file {path} must be a mapping")
    unknown = sorted(set(spec) - KEYS)
    if unknown:
        raise CLIError(f"sweep file: unknown key(s) {unknown}; allowed: {sorted(KEYS)}")
    for key in ("envs", "agents"):
        if not isinstance(spec.get(key), list) or not spec[key]:
            raise CLIError(f"sweep file: {key} must be a non-empty list")
    if spec.get("seeds") is None or spec["seeds"] == []:
        raise CLIError("sweep file: seeds is required, e.g. seeds: 0-9 or seeds: [0, 1, 2]")
    for key in ("batch_size", "rounds"):
        v = spec.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise CLIError(f"sweep file: {key} must be an int >= 1, got {v!r}")
    for entry in spec["agents"]:
        if isinstance(entry, dict):
            bad = sorted(set(entry) - ENTRY_KEYS)
            envs = entry.get("envs", [])
            if bad or not isinstance(entry.get("agent"), str) or not isinstance(envs, list):
                raise CLIError(
                    f"sweep file: an agents entry must be a name or a mapping with agent "
                    f"(optional: {', '.join(sorted(ENTRY_KEYS - {'agent'}))}); got {entry!r}"
                )
        elif not isinstance(entry, str):
            raise CLIError(f"sweep file: agents entries must be names or mappings, got {entry!r}")
    for key in ("env_kwargs", "agent_kwargs", "grid"):
        if not isinstance(spec.get(key) or {}, dict):
            raise CLIError(f"sweep file: {key} must be a mapping")
    for key, values in (spec.get("grid") or {}).items():
        if not re.fullmatch(r"(env|agent)\.\w+", str(key)):
            raise CLIError(f"sweep file: grid key {key!r} must look like env.NAME or agent.NAME")
        if not isinstance(values, list) or not values:
            raise CLIError(f"sweep file: grid values of {key!r} must be a non-empty list")
    return spec


def plan_sweep(
    spec: dict[str, Any],
    out: Path,
    force: bool,
    jobs: int,
    max_runs: int = MAX_RUNS,
    max_rounds: int = MAX_ROUNDS,
) -> tuple[list[Job], list[Path]]:
    """All jobs still to run, and the run folders the whole sweep consists of."""
    seeds = spec["seeds"]
    seeds = parse_seeds(
        ",".join(map(str, seeds)) if isinstance(seeds, list) else str(seeds), max_runs
    )
    grid = spec.get("grid") or {}
    n_points = math.prod(len(values) for values in grid.values())
    n_entries = len(spec["envs"]) * len(spec["agents"]) * len(spec.get("policy_optimizers") or [1])
    if n_points * n_entries * len(seeds) > max_runs:
        raise CLIError(
            f"sweep file: up to {n_points * n_entries * len(seeds)} run folders, above the limit "
            f"of {max_runs}; raise it with --max-runs if you mean it"
        )
    points = [dict(zip(grid, combo, strict=True)) for combo in itertools.product(*grid.values())]
    all_jobs: list[Job] = []
    folders: list[Path] = []
    optimizers = spec.get("policy_optimizers") or ["whitebox"]
    entries = [e if isinstance(e, dict) else {"agent": e} for e in spec["agents"]]
    combos = [
        c
        for c in itertools.product(spec["envs"], optimizers, entries, points or [{}])
        if c[0] in c[2].get("envs", [c[0]]) and c[1] in c[2].get("policy_optimizers", [c[1]])
    ]
    # split one job's seeds across workers only when jobs are fewer than workers (same results)
    split = jobs if len(combos) < jobs else 1
    for env_id, policy_optimizer, entry, point in combos:
        agent = entry["agent"]
        env_kw = {**(spec.get("env_kwargs") or {}), **(entry.get("env_kwargs") or {})}
        agent_kw = {**(spec.get("agent_kwargs") or {}), **(entry.get("agent_kwargs") or {})}
        for key, value in point.items():
            group, name = key.split(".", 1)
            (env_kw if group == "env" else agent_kw)[name] = value
        tag = ",".join(t for t in (_SAFE.sub("_", str(entry.get("tag", ""))), tag_of(point)) if t)
        new, _ = plan(
            env_id,
            agent,
            seeds,
            spec.get("rounds"),
            env_kw,
            agent_kw,
            out,
            force,
            int(spec.get("batch_size", 10)),
            split,
            tag=tag,
            policy_optimizer=policy_optimizer,
            max_rounds=max_rounds,
        )
        all_jobs += new
        name = run_folder_name(agent_class(agent).name, policy_optimizer, tag)
        folders += [results.run_dir(out, env_id, name, s) for s in seeds]
    repeated = sorted(str(f) for f, n in Counter(folders).items() if n > 1)
    if repeated:
        raise CLIError(
            f"sweep file: {repeated[0]} is planned twice (an agent, env or grid value listed "
            "twice); list each once"
        )
    return all_jobs, folders


def run_sweep(jobs: list[Job], folders: list[Path], out: Path, workers, progress: bool = False):
    """Run ``jobs`` on the ``workers`` flags' backend; write and return ``sweep_summary.json``."""
    start = time.perf_counter()
    outcomes = cli.execute_on(jobs, workers, progress)
    wall = time.perf_counter() - start
    busy = {f for o in outcomes for f in o.get("busy_folders", [])}
    runs = []
    for folder in folders:
        status = "missing"
        if str(folder) in busy:
            status = "busy: another process is writing it"
        elif (why := results.verify(folder)) and (folder / "summary.json").exists():
            status = f"damaged: {why}"
        else:
            try:
                status = json.loads((folder / "summary.json").read_text()).get("status", "?")
            except (OSError, json.JSONDecodeError, AttributeError):
                pass
        runs.append({"folder": str(folder.relative_to(out)), "status": status})
    summary = {
        "runs": runs,
        "failed": [r for r in runs if r["status"] != "ok"],
        "jobs_run": len(outcomes),
        "wall_time_s": wall,
        "job_compute_s": sum(o["wall"] for o in outcomes),
    }
    results.atomic_write_json(out / "sweep_summary.json", summary)
    return summary


def finished(out: Path, env_id: str, statuses: tuple[str, ...] = ("ok",)) -> dict[tuple, dict]:
    """The summaries of ``env_id``'s runs under ``out`` of ``statuses``, by (run name, seed)."""
    records = results.load_runs([out], statuses).to_dict("records")
    return {(r["run_name"], r["seed"]): r for r in records if r["env_id"] == env_id}


def controls_of(env_id: str, env_kwargs: dict, runs: list[dict], agent_kwargs=None) -> list:
    """X's budget-matched controls, ``(agent, agent_kwargs, env_kwargs)``, from X's finished
    ``runs`` if X called the labeler ``f`` > 1 times per label and read no truth: naive labelling
    ``f`` times as many fresh responses of its own policy per round (README, "Fair comparisons");
    white-box, ``oracle-values`` too (under SB3 the oracle is paid one value query a response)."""
    import gymnasium as gym

    from agents.oracle import OracleValuesAgent
    from baselines.plan import yaml_settings

    runs = [r for r in runs if r.get("status", "ok") == "ok"]  # a stopped run counted nothing
    if not runs:
        return []
    calls, labels = max(r["labeler_calls"] for r in runs), max(r["labels_used"] for r in runs)
    reads = str(runs[0]["reads"])
    if "truth" in reads or "labeler" not in reads or calls <= labels:
        return []
    cfg, f = gym.make(env_id, **env_kwargs).unwrapped.config, calls / labels
    spr = max(cfg.samples_per_round + 1, round(cfg.samples_per_round * f))
    naive = ("naive", {}, {"samples_per_round": spr, "buffer_size": round(cfg.buffer_size * f)})
    if "+" in runs[0]["run_name"]:  # SB3: its policy's own env steps are the fresh responses
        return [naive]
    settings = {**yaml_settings(env_id, OracleValuesAgent), **(agent_kwargs or {})}
    steps = runs[0]["rounds"] * settings.get("inner_steps", 1)
    return [
        naive,
        ("oracle-values", {"value_queries": max(1, round((calls - labels) / steps))}, {}),
    ]


def budget_controls(spec: dict[str, Any], out: Path) -> list[dict[str, Any]]:
    """Entries ``budget=X`` of the :func:`controls_of` each untagged agent X under ``out``."""
    entries = []
    for env_id in spec["envs"]:
        runs: dict[str, list[dict]] = {}
        for (name, _), r in sorted(finished(out, env_id).items()):
            runs.setdefault(name, []).append(r)
        for name, rs in runs.items():
            agent, _, algo = name.partition("+")
            env_kw, agent_kw = spec.get("env_kwargs") or {}, spec.get("agent_kwargs")
            for control, kw, env in (
                [] if "@" in name else controls_of(env_id, env_kw, rs, agent_kw)
            ):
                entry = {"agent": control, "tag": f"budget={agent}", "envs": [env_id]}
                entry.update(
                    policy_optimizers=[algo or "whitebox"], agent_kwargs=kw, env_kwargs=env
                )
                entries.append(entry)
    return entries


def main(argv: list[str] | None = None) -> int:
    p = cli.command("baselines.sweep", __doc__, cli.WORKERS, cli.RERUN)
    p.add_argument("sweep", help="sweep YAML file")
    p.add_argument("--out", default="runs", help="output root (default runs/)")
    p.add_argument("--quiet", action="store_true", help="no result table at the end")
    cli.add_batch_flag(p)
    cli.add_limit_flags(p)
    try:
        args = p.parse_args(argv)
        cli.check_workers(args)
        spec = load_sweep(Path(args.sweep))
        out = confined(Path(args.out), spec.get("subdir"))
        jobs, folders = plan_sweep(spec, out, args.force, args.jobs, args.max_runs, args.max_rounds)
        cli.check_writable(out)
    except CLIError as e:
        return p.fail(e)
    todo = sum(len(j.seeds) for j in jobs)
    print(f"{len(jobs)} job(s), {todo} run(s) to do, {len(folders) - todo} done", file=sys.stderr)
    try:
        summary = run_sweep(jobs, folders, out, args, not args.no_progress)
        if spec.get("controls") and (entries := budget_controls(spec, out)):
            more = plan_sweep({**spec, "agents": entries, "grid": None}, out, args.force, args.jobs)
            print(f"{len(entries)} budget-matched control(s)", file=sys.stderr)
            extra = run_sweep(*more, out, args, not args.no_progress)
            folders += more[1]
            summary["runs"] += extra["runs"]
            summary["failed"] += extra["failed"]
            results.atomic_write_json(out / "sweep_summary.json", summary)
    except CLIError as e:
        return p.fail(e)
    n = len(summary["runs"])
    print(f"{n - len(summary['failed'])}/{n} runs ok -> {out}")
    for r in summary["failed"]:
        print(f"  {r['status']}: {r['folder']}", file=sys.stderr)
    if not args.quiet:
        from baselines.report import print_result

        print_result(folders, out)
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
