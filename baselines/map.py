"""Collapse maps: a grid of env configs x agents x seeds, drawn as heatmaps.

    python -m baselines.map ENV --x KNOB=v1,v2,... --y KNOB=v1,v2,... --agents a,b,c
                            [--seeds 0-9] [--rounds N] [--env-kwargs K=V ...] [--jobs 2]
                            [--backend local|ray] [--address ADDR] [--out runs/maps]
                            [--results DIR] [--name NAME] [--force]

Every cell of the grid (one value of each knob) runs every agent over the seeds through the sweep
machinery (run folders ``OUT/NAME/ENV/AGENT@X=x,Y=y/seed_S``, resumption and the Ray backend of
``python -m baselines.sweep``). Then, from the run folders:

* ``RESULTS/NAME.csv``: one row per (cell, agent): final true utility, collapse drop (peak block
  minus final block, :func:`baselines.results.summarise_history`) and peak, each as a mean with
  its 95 % percentile-bootstrap CI over seeds; labeler calls per run; vs naive on the seeds both
  have (:func:`baselines.stats.compare`, paired): final U difference [t CI], P(improvement), verdict.
* ``RESULTS/NAME.md``: the command and those comparisons in the generated comparison block.
* ``RESULTS/NAME.png``: heatmaps of naive's collapse drop and final true utility, and of each
  other agent's final U minus naive's (hatched where no difference is detected); a last panel
  names, per cell, the best oracle-free agent better than naive (:func:`best_agent`).
* ``RESULTS/NAME.json``: the command, the sweep it ran, the wall time and the code commit.

``RESULTS`` defaults to ``OUT/NAME`` (untracked); committed maps are written with
``--results results/maps``. Errors are one line naming the argument.
"""

from __future__ import annotations

import itertools
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from baselines import cli, results, stats
from baselines.plan import CLIError, _read_value, parse_kwargs, parse_seeds, run_folder_name
from baselines.plot import pyplot
from baselines.sweep import _SAFE, controls_of, finished, plan_sweep, run_sweep, tag_of

#: the agent every difference is taken against
REFERENCE = "naive"
#: CSV column -> field of :func:`baselines.stats.compare` (the comparison with naive)
COMPARED = {"n_paired": "n_a", "diff_vs_naive": "difference", "diff_lo": "difference_lo"}
COMPARED |= {"diff_hi": "difference_hi"} | {k: k for k in "p_improvement p_lo p_hi verdict".split()}


def parse_axis(text: str, flag: str) -> tuple[str, list[Any]]:
    """``"KNOB=v1,v2,..."`` -> (KNOB, [v1, v2, ...]) with values read as in ``--env-kwargs``."""
    m = re.fullmatch(r"\s*(\w+)\s*=(.+)", text or "")
    if not m:
        raise CLIError(f"{flag}: expected KNOB=v1,v2,..., got {text!r}")
    values = [_read_value(v.strip()) for v in m[2].split(",") if v.strip()]
    if len(values) < 1:
        raise CLIError(f"{flag}: no values in {text!r}")
    if len({repr(v) for v in values}) != len(values):
        raise CLIError(f"{flag}: a value is listed twice in {text!r}")
    return m[1], values


def map_spec(
    env_id: str,
    x: tuple[str, list[Any]],
    y: tuple[str, list[Any]],
    agents: list[str],
    seeds: list[int],
    rounds: int | None = None,
    env_kwargs: dict[str, Any] | None = None,
    batch_size: int = 10,
) -> dict[str, Any]:
    """The sweep (a :mod:`baselines.sweep` spec) that a map runs."""
    spec: dict[str, Any] = {
        "envs": [env_id],
        "agents": list(agents),
        "seeds": list(seeds),
        "env_kwargs": dict(env_kwargs or {}),
        "grid": {f"env.{x[0]}": list(x[1]), f"env.{y[0]}": list(y[1])},
        "batch_size": batch_size,
    }
    if rounds is not None:
        spec["rounds"] = rounds
    return spec


def check_axes(env_id: str, x, y, env_kwargs: dict[str, Any]) -> None:
    """Refuse a knob named twice or in ``--env-kwargs`` too, or a value the env rejects."""
    import gymnasium as gym

    import rlhf_envs  # noqa: F401

    if env_id not in gym.registry:
        raise CLIError(
            f"env: unknown environment {env_id!r}; known: {', '.join(rlhf_envs.ENV_IDS)}"
        )
    if env_id not in rlhf_envs.WHITE_BOX_ENV_IDS:
        raise CLIError(f"env: {env_id} has no white-box agents, which maps run")
    if x[0] == y[0]:
        raise CLIError(f"--x and --y name the same knob {x[0]!r}; give two different knobs")
    for flag, (knob, values) in (("--x", x), ("--y", y)):
        if knob in env_kwargs:
            raise CLIError(f"{flag}: {knob} is also given in --env-kwargs; give it once")
        for v in values:
            try:
                gym.make(env_id, **{**env_kwargs, knob: v}).close()
            except (TypeError, ValueError) as e:
                raise CLIError(
                    f"{flag}: {knob}={v!r}: {str(e).split(' was raised from')[0]}"
                ) from None


def cell_run_name(agent: str, x: str, xv: Any, y: str, yv: Any) -> str:
    """The run folder name of ``agent`` (or of a control ``C@budget=X``) in the cell ``x=xv,
    y=yv`` (as the sweep names it)."""
    from baselines.judge import agent_class

    base, _, control = agent.partition("@")
    cell = tag_of({f"env.{x}": xv, f"env.{y}": yv})
    tag = f"{_SAFE.sub('_', control)},{cell}" if control else cell
    return run_folder_name(agent_class(base).name, "whitebox", tag)


def controls(out: Path, env_id: str, x, y, agents: list[str], seeds, env_kwargs) -> list[dict]:
    """Sweep entries of each agent's budget-matched controls in each cell, generated from its
    finished runs there (:func:`baselines.sweep.controls_of`), tagged ``budget=X,CELL``."""
    done, entries = finished(out, env_id), []
    for agent, xv, yv in itertools.product(agents, x[1], y[1]):
        name, cell = cell_run_name(agent, x[0], xv, y[0], yv), {**env_kwargs, x[0]: xv, y[0]: yv}
        runs = [done[name, s] for s in seeds if (name, s) in done]  # this map's seeds, as collect
        tag = f"budget={agent},{name.partition('@')[2]}"
        for control, kw, env in controls_of(env_id, cell, runs):
            entries.append(
                dict(agent=control, tag=tag, agent_kwargs=kw, env_kwargs={**cell, **env})
            )
    return entries


def collect(
    out: Path, env_id: str, x, y, agents: list[str], seeds: list[int]
) -> list[dict[str, Any]]:
    """One row per (cell, agent) with means and 95 % CIs over the seeds that finished, and the
    comparisons of each agent X with its controls ``C@budget=X`` (block rows)."""
    done = finished(out, env_id)
    rows, versus = [], []
    for yv in y[1]:
        for xv in x[1]:
            per_agent = {}
            for agent in agents:
                name = cell_run_name(agent, x[0], xv, y[0], yv)
                per_agent[agent] = {s: done[name, s] for s in seeds if (name, s) in done}
            ref = per_agent.get(REFERENCE, {})
            for agent in agents:
                found = per_agent[agent]
                row: dict[str, Any] = {x[0]: xv, y[0]: yv, "agent": agent, "n": len(found)}
                for key in ("final_true_utility", "collapse_drop", "peak_true_utility"):
                    mean, lo, hi = stats.mean_ci([s[key] for s in found.values()], 2000)
                    row.update({key: mean, f"{key}_lo": lo, f"{key}_hi": hi})
                calls = [s.get("labeler_calls", np.nan) for s in found.values()]
                row["labeler_calls"] = float(np.mean(calls)) if calls else np.nan
                paired = sorted(set(found) & set(ref))
                row.update(dict.fromkeys(COMPARED, np.nan), n_paired=len(paired), verdict="")
                if agent != REFERENCE and len(paired) >= 2:
                    u = [[d[s]["final_true_utility"] for s in paired] for d in (found, ref)]
                    c = stats.compare(*u, paired=True)
                    row.update({k: c[v] for k, v in COMPARED.items()})
                row["significant"] = row["verdict"] in stats.VERDICTS[:2]
                rows.append(row)
                base = agent.partition("@budget=")[2]  # a control of base: base against it
                if base and len(both := sorted(set(found) & set(per_agent[base]))) >= 2:
                    u = [
                        [d[s]["final_true_utility"] for s in both] for d in (per_agent[base], found)
                    ]
                    c, at = stats.compare(*u, paired=True), f" ({x[0]}={xv}, {y[0]}={yv})"
                    versus.append(dict(a=base + at, b=agent + at, **c))
    return rows, versus


#: reads that call the labeler beyond the RM's own labels, or read the truth
EXTRA_READS = {"labeler_values", "labeler_grads", "truth_values", "truth_grads"}


def oracle_free(agent: str) -> bool:
    """Whether ``agent`` uses no labeler call beyond the RM's own labels (declared reads)."""
    from baselines.judge import agent_class

    cls = agent_class(agent)
    return not set(cls(cls.config_cls()).declared_reads()) & EXTRA_READS


def page(rows: list[dict[str, Any]], versus, x: str, y: str, title: str, command: str) -> str:
    """``RESULTS/NAME.md``: the title, the command and each agent vs naive per cell, then each
    agent vs its controls (``versus``), in a generated block."""
    block = []
    for r in filter(lambda r: r["verdict"], rows):
        at = f" ({x}={r[x]}, {y}={r[y]})"
        block.append({v: r[k] for k, v in COMPARED.items()} | {"n_b": r["n_paired"]})
        block[-1].update(a=r["agent"] + at, b=REFERENCE + at)
    block += versus
    what = stats.comparison_block(block, "final U, paired by seed") if block else []
    return "\n".join([f"# Collapse map: {title}", "", f"`{command}`", "", *what, ""])


def best_agent(
    rows: list[dict[str, Any]], x: str, y: str, eligible: set[str] | None = None
) -> dict[tuple, str]:
    """Per cell: the ``eligible`` agent (default all) with the highest mean final U among those
    better than naive by the verdict (``"naive"`` when none is; ties: list order)."""
    out: dict[tuple, str] = {}
    top: dict[tuple, float] = {}
    for r in rows:
        key, u = (r[x], r[y]), r["final_true_utility"]
        out.setdefault(key, REFERENCE)
        ok = r["verdict"] == "better" and (eligible is None or r["agent"] in eligible)
        if ok and u > top.get(key, -np.inf):
            out[key], top[key] = r["agent"], u
    return out


def heatmaps(rows: list[dict[str, Any]], x, y, agents: list[str], title: str, path: Path) -> Path:
    """The map's figure (see the module docstring)."""
    import matplotlib

    plt = pyplot()

    xs, ys = list(x[1]), list(y[1])
    by = {(r[x[0]], r[y[0]], r["agent"]): r for r in rows}

    def grid(agent: str, key: str) -> np.ndarray:
        return np.array([[by[(xv, yv, agent)][key] for xv in xs] for yv in ys], dtype=float)

    others = [a for a in agents if a != REFERENCE]
    diffs = [np.abs(grid(a, "diff_vs_naive")) for a in others]
    vmax = max([float(np.nanmax(d)) for d in diffs if np.isfinite(d).any()] + [1e-9])
    utility_max = max(float(np.nanmax(grid(a, "final_true_utility"))) for a in agents)
    # (agent, column, title, colour map, limits) of each heatmap; None: the best-agent panel
    panels = [
        (REFERENCE, "collapse_drop", "naive: collapse drop", "magma", (0, None)),
        (REFERENCE, "final_true_utility", "naive: final U", "viridis", (0, utility_max)),
    ][: 2 * (REFERENCE in agents)]
    panels += [(a, "diff_vs_naive", f"{a}: final U - naive", "RdBu", (-vmax, vmax)) for a in others]
    panels.append(None)
    ncol = min(4, len(panels))
    nrow = -(-len(panels) // ncol)
    fig, axes = plt.subplots(
        nrow, ncol, figsize=(3.6 * ncol, 3.1 * nrow), squeeze=False, constrained_layout=True
    )
    best = best_agent(rows, x[0], y[0], {a for a in agents if oracle_free(a)})
    colours = {a: plt.cm.tab10(i % 10) for i, a in enumerate(agents)}
    for i, ax in enumerate(axes.flat):
        if i >= len(panels):
            ax.axis("off")
            continue
        ax.set_xticks(range(len(xs)), [str(v) for v in xs], fontsize=7)
        ax.set_yticks(range(len(ys)), [str(v) for v in ys], fontsize=7)
        ax.set_xlabel(x[0], fontsize=8)
        ax.set_ylabel(y[0], fontsize=8)
        if panels[i] is None:
            img = np.array([[agents.index(best[(xv, yv)]) for xv in xs] for yv in ys])
            cmap = matplotlib.colors.ListedColormap([colours[a] for a in agents])
            ax.imshow(img, cmap=cmap, vmin=-0.5, vmax=len(agents) - 0.5, origin="lower")
            for (r, c), v in np.ndenumerate(img):
                name = agents[v].replace("-", "-\n", 1)
                ax.text(c, r, name, ha="center", va="center", fontsize=5.5, linespacing=0.9)
            ax.set_title("best oracle-free agent (better than naive)", fontsize=8)
            continue
        kind, key, label, cmap, lim = panels[i]
        g = grid(kind, key)
        im = ax.imshow(g, cmap=cmap, vmin=lim[0], vmax=lim[1], origin="lower", aspect="auto")
        fig.colorbar(im, ax=ax, shrink=0.8)
        ax.set_title(label, fontsize=8)
        for (r, c), v in np.ndenumerate(g):
            cell = by[(xs[c], ys[r], kind)]
            faint = key == "diff_vs_naive" and not cell["significant"]
            if faint:
                ax.add_patch(
                    matplotlib.patches.Rectangle(
                        (c - 0.5, r - 0.5), 1, 1, fill=False, hatch="///", color="0.5", lw=0
                    )
                )
            text, colour = "-" if v != v else f"{v:.2f}", "0.45" if faint else "black"
            box = {"facecolor": "white", "alpha": 0.6, "lw": 0, "pad": 0.5}
            ax.text(c, r, text, ha="center", va="center", fontsize=7, color=colour, bbox=box)
    fig.suptitle(title + "   (hatched: no difference detected at 95 %)", fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    p = cli.command("baselines.map", __doc__, cli.ROUNDS, cli.WORKERS, cli.RERUN)
    p.add_argument("env", help="registered env id with white-box agents")
    p.add_argument("--x", required=True, help="knob on the x axis: KNOB=v1,v2,...")
    p.add_argument("--y", required=True, help="knob on the y axis: KNOB=v1,v2,...")
    p.add_argument("--agents", default="naive,fpo,kl", help="comma-separated (naive is added)")
    p.add_argument("--seeds", default="0-9", help="seeds per cell (default 0-9)")
    p.add_argument("--env-kwargs", nargs="*", metavar="K=V", help="env settings of every cell")
    p.add_argument(
        "--batch-size", type=cli.positive_int, default=10, help="seeds per batched program"
    )
    p.add_argument("--out", default="runs/maps", help="run folders root (default runs/maps)")
    p.add_argument("--results", default=None, help="figure/CSV folder (default OUT/NAME)")
    p.add_argument("--name", default=None, help="map name (default ENV__X_x_Y)")
    cli.add_batch_flag(p)
    cli.add_limit_flags(p)
    start = time.perf_counter()
    try:
        args = p.parse_args(argv)
        cli.check_workers(args)
        x, y = parse_axis(args.x, "--x"), parse_axis(args.y, "--y")
        agents = [a.strip() for a in args.agents.split(",") if a.strip()]
        if not agents:
            raise CLIError("--agents: give at least one agent")
        if len(set(agents)) != len(agents):
            raise CLIError(f"--agents: an agent is listed twice in {args.agents!r}")
        from baselines.judge import agent_class

        for a in agents:
            try:
                agent_class(a)
            except ValueError as e:
                raise CLIError(f"--agents: {e}") from None
        agents = [REFERENCE] + [a for a in agents if a != REFERENCE]
        seeds = parse_seeds(args.seeds, args.max_runs)
        env_kwargs = parse_kwargs(args.env_kwargs, "--env-kwargs")
        check_axes(args.env, x, y, env_kwargs)
        name = args.name or f"{args.env}__{x[0]}_x_{y[0]}"
        if not re.fullmatch(r"[A-Za-z0-9_.=,+-]+", name):
            raise CLIError(f"--name: use letters, digits and _.=,+- only, got {name!r}")
        out = Path(args.out) / name
        res = Path(args.results) if args.results else out
        spec = map_spec(args.env, x, y, agents, seeds, args.rounds, env_kwargs, args.batch_size)
        jobs, folders = plan_sweep(spec, out, args.force, args.jobs, args.max_runs, args.max_rounds)
        cli.check_writable(out, "--out")
        cli.check_writable(res, "--results")
        todo = sum(len(j.seeds) for j in jobs)
        print(
            f"{len(x[1]) * len(y[1])} cells x {len(agents)} agents x {len(seeds)} seeds: "
            f"{todo} run(s) to do, {len(folders) - todo} done",
            file=sys.stderr,
        )
        summary = run_sweep(jobs, folders, out, args, not args.no_progress)
        if extra := controls(out, args.env, x, y, agents, seeds, env_kwargs):
            more = plan_sweep({**spec, "agents": extra, "grid": None}, out, args.force, args.jobs)
            summary["failed"] += run_sweep(*more, out, args, not args.no_progress)["failed"]
            folders, todo = folders + more[1], todo + sum(len(j.seeds) for j in more[0])
    except CLIError as e:
        return p.fail(e)
    labels = list(dict.fromkeys(agents + [f"{e['agent']}@{e['tag'].split(',')[0]}" for e in extra]))
    rows, versus = collect(out, args.env, x, y, labels, seeds)
    res.mkdir(parents=True, exist_ok=True)
    results.write_csv(res / f"{name}.csv", rows, lineterminator="\n")
    title = f"{args.env}, {len(seeds)} seeds per cell" + (
        f", {args.rounds} rounds" if args.rounds else ""
    )
    if env_kwargs:
        title += ", " + " ".join(f"{k}={v}" for k, v in env_kwargs.items())
    heatmaps(rows, x, y, agents, title, res / f"{name}.png")
    meta = {
        "command": "python -m baselines.map " + " ".join(sys.argv[1:] if argv is None else argv),
        "sweep": spec,
        "runs": len(folders),
        "runs_computed_now": todo,
        "failed": summary["failed"],
        "compute_wall_time_s": round(summary["wall_time_s"], 2),
        "total_wall_time_s": round(time.perf_counter() - start, 2),
        "git_commit": results.git_commit(),
    }
    results.atomic_write_json(res / f"{name}.json", meta)
    text = page(rows, versus, x[0], y[0], title, meta["command"])
    results.atomic_write_text(res / f"{name}.md", text)
    print(
        f"{len(folders) - len(summary['failed'])}/{len(folders)} runs ok -> {res / name}.png, .csv"
    )
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
