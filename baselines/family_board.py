"""Env families: the learnability check, the tuning protocol and the generalisation board.

    python -m baselines.family_board check ENV [--split train|test|both] [--candidates N]
    python -m baselines.family_board tune ENV [--agents a,b]  # train split, seeds 100-109
    python -m baselines.family_board board ENV         # test split, seeds 0-9
    (each with [--version v1|v2] [--jobs 2] [--backend local|ray] [--out runs/families/CMD]
     [--results leaderboard/families] [--force]; v2's splits and files: ``v2/test``, ``*_v2_ENV``)

``check`` draws the first ``N`` candidates of a split from the env's family distribution
(:func:`rlhf_envs.families.candidates`), runs the oracle and naive on each with the check seeds
200-209 (neither the tuning seeds 100-109 nor the reporting seeds 0-9) for the family's rounds
(:data:`rlhf_envs.families.ROUNDS`), through the sweep machinery (resumable), and writes
``RESULTS/check_ENV.csv``: per candidate, the oracle's and naive's mean final true utility and
naive's collapse drop with 95 % bootstrap CIs, whether the candidate is learnable
(:data:`LEARNABLE`) and whether naive collapses (:data:`COLLAPSE_DROP`). It prints the first
:data:`~rlhf_envs.families.SIZE` learnable candidates of each split as the entry to freeze in
``rlhf_envs/data/families_v1.json``. No agent's setting is chosen on these runs.

``tune`` runs every agent of :data:`GRID` at each point of its grid on every config of the
*train* split with seeds 100-109 (plus naive and the oracle) and freezes, per agent, the value
with the highest IQM of normalised final U (below; ties: the first in the grid) in
``RESULTS/tuned_ENV.json``; ``RESULTS/tune_ENV.csv`` has every grid point's IQM and 95 % CI.

``board`` reads only ``tuned_ENV.json`` (refusing to run without it), runs every agent with its
frozen setting on the *test* split with seeds 0-9 and writes ``RESULTS/BOARD_ENV.md`` (with
``board_ENV.csv``, ``per_config_ENV.csv`` and ``profile_ENV.png``), which explains itself. The
test split enters no choice: the command takes no setting of its own.

Normalised final U of a run on config ``c``: ``(U - mean naive_c) / (mean oracle_c - mean
naive_c)``, the means over the same seeds of the same split (0 = naive, 1 = the oracle). A run
stopped because its policy diverged (:data:`agents.whitebox.DIVERGED`) is an outcome of its
setting: it scores final U 0, the true utility there (``exp(-0.05 * 1e12)`` underflows to 0), so
a diverging grid point is never chosen over one that does not. Any other failure stops the command.
"""

from __future__ import annotations

import itertools
import json
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from baselines import cli, report, results, stats
from baselines.plan import CLIError, run_folder_name
from baselines.plot import pyplot, save
from baselines.site import write_site
from baselines.sweep import _SAFE, controls_of, finished, plan_sweep, run_sweep

CHECK_SEEDS = list(range(200, 210))
TUNE_SEEDS = list(range(100, 110))
TEST_SEEDS = list(range(0, 10))
#: learnable: the oracle's mean final U reaches this share of the peak utility
LEARNABLE = 0.9
PEAK = 10.0  # utility_scale: not a family knob
#: naive collapses: mean drop at least this (5 % of the peak) with its CI above 0
COLLAPSE_DROP = 0.5
#: untuned, with generated controls (not neural: its configs fix the spr/buffer a control changes)
BUDGETED = {"RLHFBlindSpot-v0": ("fpo-relaxed", "fpo-exact")}
#: the hyperparameters tuned per agent on the train split, and the values tried (all combinations)
GRID: dict[str, dict[str, list[float]]] = {
    "fpo": {"fpo_gamma": [0.03, 0.1, 0.3]},
    "kl": {"kl_coef": [0.03, 0.1, 0.3]},
    "ensemble": {"ensemble_k": [0.5, 1.0, 2.0]},
    "elite-anchor": {"anchor_coef": [1.0, 10.0, 100.0]},
    "elite-ensemble": {"anchor_coef": [1.0, 10.0, 100.0], "ensemble_k": [0.5, 1.0]},
    "warm": {"warm_lr_spread": [2.0]},
    "rm-aggregate": {"archive_size": [10000]},
    "reinit": {"iterations": [2, 4, 8]},
}


def _names(version: str) -> tuple[str, str]:
    """A family version's split prefix and file suffix (none for the default version)."""
    from rlhf_envs import families

    return ("", "") if version == families.VERSION else (f"{version}/", f"_{version}")


def check(env_id: str, splits: list[str], n: int, workers, out, res, version="v1") -> list[dict]:
    """Run the check (see the module docstring); returns the CSV rows."""
    from rlhf_envs import families

    pre, sfx = _names(version)
    cands = {pre + split: families.candidates(env_id, pre + split, n) for split in splits}
    entries = [
        {"agent": agent, "tag": f"{split}{i}", "env_kwargs": kw, "envs": [env_id]}
        for split, items in cands.items()
        for i, kw in enumerate(items)
        for agent in ("oracle", "naive")
    ]
    rounds = families.ROUNDS[env_id]
    spec = {"envs": [env_id], "agents": entries, "seeds": CHECK_SEEDS, "rounds": rounds}
    _run(spec, out, workers)
    ok = finished(out, env_id)
    rows = []
    for split, items in cands.items():
        for i, kw in enumerate(items):
            tag = _SAFE.sub("_", f"{split}{i}")
            names = [run_folder_name(a, tag=tag) for a in ("oracle", "naive")]
            o, nv = ([ok[n, s] for s in CHECK_SEEDS if (n, s) in ok] for n in names)
            row = {"split": split, "candidate": i, **{k: kw[k] for k in sorted(kw)}}
            for col, runs, key in (
                ("oracle_final_u", o, "final_true_utility"),
                ("naive_final_u", nv, "final_true_utility"),
                ("naive_drop", nv, "collapse_drop"),
            ):
                m, lo, hi = stats.mean_ci([s[key] for s in runs], 2000)
                row.update({col: m, f"{col}_lo": lo, f"{col}_hi": hi})
            row["seeds"] = min(len(o), len(nv))
            row["learnable"] = bool(row["oracle_final_u"] >= LEARNABLE * PEAK)
            drop = row["naive_drop"]
            row["naive_collapses"] = bool(drop >= COLLAPSE_DROP and row["naive_drop_lo"] > 0)
            rows.append(row)
    res.mkdir(parents=True, exist_ok=True)
    results.write_csv(res / f"check{sfx}_{env_id}.csv", rows, lineterminator="\n")
    return rows


def _run(spec: dict, out: Path, workers) -> None:
    """Run the sweep ``spec`` into ``out`` on the backend of the :data:`cli.WORKERS` flags."""
    summary = run_sweep(*plan_sweep(spec, out, False, workers.jobs, max_runs=100_000), out, workers)
    # stopped runs are scored (a diverged policy is a result of its setting; see _final)
    failed = [r for r in summary["failed"] if r["status"] != "stopped"]
    if failed:
        raise CLIError(f"{len(failed)} run(s) failed, e.g. {failed[0]}")


def _tag(split: str, i: int, label: str, agent: str) -> str:
    """The sweep tag of the setting ``label`` of ``agent`` on config ``i`` of ``split``."""
    return f"{split}{i}" + (f",{label}" if label != agent else "")


def _spec(env_id: str, split: str, settings: dict, seeds: list[int], dtype: str) -> dict:
    """The sweep of each (agent, setting) of ``settings`` on each config of the split."""
    from rlhf_envs import families

    # a hidden run's record keeps the secret's commitment, never the config
    hidden = {"hidden_commitment": families.commitment()} if split == families.HIDDEN else {}
    entries = [
        {
            "agent": agent,
            "tag": _tag(split, i, label, agent),
            "env_kwargs": {"family": f"{split}/{i}", **hidden, **(env[0] if env else {})},
            "agent_kwargs": kw,
            "envs": [env_id],
        }
        for i in range(len(families.configs(env_id, split)))
        for label, (agent, kw, *env) in settings.items()
    ]
    spec = {"envs": [env_id], "agents": entries, "seeds": seeds, "rounds": families.ROUNDS[env_id]}
    # float64 runs carry no dtype setting: their settings hashes are those of the committed runs
    return spec if dtype == "float64" else {**spec, "env_kwargs": {"dtype": dtype}}


#: how the white-box loop's divergence stop begins its reason (see :data:`agents.whitebox.DIVERGED`)
DIVERGED_REASON = "policy became NaN/inf or diverged"


def _final(summary: dict, folder: Path) -> float:
    """A run's final true utility; 0 for a run stopped as diverged (see the module docstring)."""
    if summary.get("status") == "stopped" and summary.get("reason", "").startswith(DIVERGED_REASON):
        return 0.0
    if summary.get("status") != "ok":
        raise CLIError(f"{folder}: {summary.get('status')}: {summary.get('reason', '')}")
    return summary["final_true_utility"]


def normalised(
    out: Path, env_id: str, split: str, settings: dict, seeds: list[int]
) -> tuple[dict[str, list[np.ndarray]], dict[str, list[np.ndarray]], dict[str, float]]:
    """Per setting label: per config, each seed's normalised and raw final U; mean labeler calls."""
    from rlhf_envs import families

    done = finished(out, env_id, ("ok", "stopped"))
    norm: dict[str, list[np.ndarray]] = {label: [] for label in settings}
    raw: dict[str, list[np.ndarray]] = {label: [] for label in settings}
    calls: dict[str, list[float]] = {label: [] for label in settings}
    for i in range(len(families.configs(env_id, split))):
        u = {}
        for label, (agent, *_) in settings.items():
            name = run_folder_name(agent, tag=_SAFE.sub("_", _tag(split, i, label, agent)))
            missing = [s for s in seeds if (name, s) not in done]
            if missing:
                raise CLIError(f"{out}: no finished run {env_id}/{name} for seeds {missing}")
            found = [done[name, s] for s in seeds]
            u[label] = np.array([_final(r, Path(r["folder"])) for r in found])
            calls[label] += [c for r in found if (c := r.get("labeler_calls", np.nan)) == c]
        lo, hi = u["naive"].mean(), u["oracle"].mean()
        for label in settings:
            norm[label].append((u[label] - lo) / (hi - lo))
            raw[label].append(u[label])
    return norm, raw, {k: float(np.mean(v)) if v else float("nan") for k, v in calls.items()}


def tune(
    env_id: str,
    workers,
    out: Path,
    res: Path,
    agents: list[str] | None = None,
    dtype: str = "float64",
    version: str = "v1",
) -> dict[str, Any]:
    """The tuning protocol (see the module docstring); returns the frozen settings.

    ``workers``: the :data:`cli.WORKERS` flags and ``batch_agents``. ``agents``: those of
    :data:`GRID` to tune (default: all). ``dtype``: the followers' (recorded; a board must match).
    """

    settings: dict[str, tuple[str, dict]] = {"naive": ("naive", {}), "oracle": ("oracle", {})}
    for agent, grid in GRID.items():
        if agents is not None and agent not in agents:
            continue
        for combo in itertools.product(*grid.values()):
            kw = dict(zip(grid, combo, strict=True))
            label = ",".join(f"{k}={v}" for k, v in kw.items())
            settings[f"{agent}:{label}"] = (agent, kw)
    pre, sfx = _names(version)
    _run(_spec(env_id, pre + "train", settings, TUNE_SEEDS, dtype), out, workers)
    norm, _, _ = normalised(out, env_id, pre + "train", settings, TUNE_SEEDS)
    rows, chosen = [], {}
    for label, (agent, kw) in settings.items():
        score = stats.iqm(norm[label])
        lo, hi = stats.stratified_bootstrap_ci(norm[label], n_boot=2000)
        rows.append({"agent": agent, "setting": json.dumps(kw), "iqm": score, "lo": lo, "hi": hi})
        if agent in GRID and (agent not in chosen or score > chosen[agent][1]):
            chosen[agent] = (kw, score)
    results.write_csv(res / f"tune{sfx}_{env_id}.csv", rows, lineterminator="\n")
    frozen = {
        "env_id": env_id,
        "family_version": version,
        "split": "train",
        "seeds": TUNE_SEEDS,
        "rule": "per agent, the grid value with the highest IQM of normalised final U over "
        "train configs x seeds 100-109 (ties: first in the grid)",
        "grid": {a: g for a, g in GRID.items() if agents is None or a in agents},
        "settings": {a: kw for a, (kw, _) in chosen.items()},
        **({"dtype": dtype} if dtype != "float64" else {}),  # float64 files read as before
        "git_commit": results.git_commit(),
    }
    results.atomic_write_json(res / f"tuned{sfx}_{env_id}.json", frozen)
    return frozen


def board(
    env_id: str, workers, out: Path, res: Path, dtype="float64", hidden=False, version="v1"
) -> str:
    """The generalisation leaderboard on the test split (see the module docstring), followers in
    ``dtype`` (the tuning's); ``hidden``: on :data:`rlhf_envs.families.HIDDEN` instead, revealed
    in ``revealed_ENV.json`` once written."""
    from baselines.judge import agent_class
    from rlhf_envs import families

    pre, vsfx = _names(version)
    path = res / f"tuned{vsfx}_{env_id}.json"
    if not path.exists():
        raise CLIError(f"--results: {path} is missing; run the tune command first")
    frozen = json.loads(path.read_text())
    if frozen.get("family_version") != version:
        raise CLIError(f"--results: {path} was tuned on another family version")
    if frozen.get("dtype", "float64") != dtype:
        raise CLIError(
            f"--dtype: {path} was tuned in {frozen.get('dtype', 'float64')}, not {dtype}; "
            "tune and board with the same --dtype"
        )
    settings: dict[str, tuple[str, dict]] = {"naive": ("naive", {}), "oracle": ("oracle", {})}
    settings.update((agent, (agent, kw)) for agent, kw in frozen["settings"].items())
    settings.update((agent, (agent, {})) for agent in BUDGETED.get(env_id, ()))
    settings = {
        k: settings[k] for k in sorted(settings, key=lambda a: (a == "oracle", a != "naive"))
    }
    split, sfx = (pre + families.HIDDEN, vsfx + "_hidden") if hidden else (pre + "test", vsfx)
    t0 = time.perf_counter()
    _run(_spec(env_id, split, settings, TEST_SEEDS, dtype), out, workers)
    done, configs = finished(out, env_id, ("ok", "stopped")), families.configs(env_id, split)
    for label, (agent, *_) in list(settings.items()):  # budget-matched controls, generated
        tags = (_SAFE.sub("_", _tag(split, i, label, agent)) for i in range(len(configs)))
        runs = [done[run_folder_name(agent, tag=t), s] for t in tags for s in TEST_SEEDS]
        for control, kw, env in controls_of(env_id, {"family": f"{split}/0"}, runs):
            settings[f"{control}@budget={label}"] = (control, kw, env)
    _run(_spec(env_id, split, settings, TEST_SEEDS, dtype), out, workers)
    wall = time.perf_counter() - t0
    norm, raw, calls = normalised(out, env_id, split, settings, TEST_SEEDS)
    rows = []
    for label, (agent, kw, *env) in settings.items():
        cls = agent_class(agent)
        reads = ",".join(cls(cls.config_cls(**kw)).declared_reads())
        q_lo, q_hi = stats.stratified_bootstrap_ci(norm[label], n_boot=2000)
        m_lo, m_hi = stats.stratified_bootstrap_ci(norm[label], np.mean, n_boot=2000)
        poi = stats.probability_of_improvement(raw[label], raw["naive"])
        # each agent's own bootstrap stream: adding an agent to the board changes no other row
        rng = np.random.default_rng([0, zlib.crc32(label.encode())])
        p_lo, p_hi = stats.probability_of_improvement_ci(raw[label], raw["naive"], 500, rng=rng)
        mean = float(np.mean(np.concatenate(norm[label])))
        rows.append(
            dict(agent=label, setting=json.dumps({**kw, **(env[0] if env else {})}), reads=reads)
        )
        rows[-1].update(
            labeler_calls=calls[label], iqm=stats.iqm(norm[label]), iqm_lo=q_lo, iqm_hi=q_hi
        )
        rows[-1].update(mean=mean, mean_lo=m_lo, mean_hi=m_hi)
        rows[-1].update(poi_vs_naive=poi, poi_lo=p_lo, poi_hi=p_hi)
    results.write_csv(res / f"board{sfx}_{env_id}.csv", rows, lineterminator="\n")
    per_config = []
    for i, cfg in enumerate(families.configs(env_id, split)):
        row = {"config": f"{split}/{i}", **cfg}
        for label in settings:
            row[label] = float(raw[label][i].mean())
        per_config.append(row)
    results.write_csv(res / f"per_config{sfx}_{env_id}.csv", per_config, lineterminator="\n")
    _profile(norm, res / f"profile{sfx}_{env_id}.png", env_id)
    f = lambda m, lo, hi: f"{m:.2f} [{lo:.2f}, {hi:.2f}]"  # noqa: E731
    note = f" Followers in {dtype} (`--dtype {dtype}`): not comparable bit for bit with a float64"
    lines = [
        f"# Generalisation leaderboard: {env_id} family {version}, {split} split",
        "",
        f"Generated by `python -m baselines.family_board board {env_id}"
        + (f" --version {version}" if pre else "")
        + "`; do not edit by hand.",
        f"{len(per_config)} {split} configs x seeds {TEST_SEEDS[0]}-{TEST_SEEDS[-1]}, "
        f"{families.ROUNDS[env_id]} rounds; settings frozen on the train split "
        f"(`tuned{vsfx}_{env_id}.json`, seeds 100-109). Normalised final U: 0 = naive's mean final "
        "true utility on the config, 1 = the oracle's. IQM and mean over configs x seeds with "
        "stratified bootstrap 95 % CIs; P(improvement) over naive on the raw final U, per "
        f"config, averaged (95 % CI). Runs: wall time {wall:.0f} s for what this call computed."
        + (note + " board." if dtype != "float64" else ""),
        "",
    ]
    headers = ["agent", "setting", "reads", "labeler calls", "IQM (norm.)", "mean (norm.)"]
    cells = [
        [r["agent"], r["setting"], r["reads"], f"{r['labeler_calls']:.0f}"]
        + [f(r[k], r[f"{k}_lo"], r[f"{k}_hi"]) for k in ("iqm", "mean")]
        + [f(r["poi_vs_naive"], r["poi_lo"], r["poi_hi"])]
        for r in rows
    ]
    lines += report.markdown_table([*headers, "P(impr. vs naive)"], cells)
    pairs = [(a, "naive") for a in settings if a != "naive"]
    pairs += [(a.split("@budget=")[1], a) for a in settings if "@budget=" in a]
    compared = [{"a": a, "b": b, **stats.compare(raw[a], raw[b], 500)} for a, b in pairs]
    what = "final U, per-config means paired by config"
    lines += ["", "Each agent against naive, each FPO form against its controls:", ""]
    lines += stats.comparison_block(compared, what)
    if sfx and (v1 := res / f"board_{env_id}.csv").exists():  # v2 or hidden: against v1 test
        lines += _against_v1(rows, v1, split)
    lines += [
        "",
        f"![performance profiles](profile{sfx}_{env_id}.png)",
        "",
        "Per config (mean final true utility over seeds 0-9):",
        "",
    ]
    fmt = lambda k, v: f"{v:.2f}" if isinstance(v, float) and k in settings else str(v)  # noqa: E731
    cells = [[fmt(k, v) for k, v in row.items()] for row in per_config]
    lines += report.markdown_table(list(per_config[0]), cells)
    if hidden:
        lines += [
            "",
            "Hidden split: drawn from the family's distribution with a secret only the judge's",
            "process held (not filtered for learnability); the runs' records keep its commitment",
            f"`{families.commitment()}`; the secret and the configs are revealed in",
            f"`revealed{vsfx}_{env_id}.json`, written after this board.",
        ]
    text = "\n".join(lines) + "\n"
    results.atomic_write_text(res / f"BOARD{sfx}_{env_id}.md", text)
    if hidden:
        reveal = {"secret": families.secret().decode(), "commitment": families.commitment()}
        reveal["configs"] = families.configs(env_id, split)
        results.atomic_write_text(
            res / f"revealed{vsfx}_{env_id}.json", json.dumps(reveal, indent=1)
        )
    return text


def _against_v1(rows: list[dict], path: Path, here: str) -> list[str]:
    """Markdown lines ranking the agents of both boards that read no truth, v1 test (``path``) and
    ``here``, by IQM (norm.); an agent's rank range counts the agents whose 95 % CI lies wholly
    above its own and wholly below it, and its verdict reads its two intervals the same way."""
    old = {r["agent"]: r for r in results.read_csv(path)}
    new = {r["agent"]: r for r in rows if r["agent"] in old and "truth" not in r["reads"]}
    ci = lambda b, a: (float(b[a]["iqm_lo"]), float(b[a]["iqm_hi"]))  # noqa: E731
    cell = lambda b, a: f"{float(b[a]['iqm']):.2f} [{ci(b, a)[0]:.2f}, {ci(b, a)[1]:.2f}]"  # noqa: E731

    def rank(b: dict, a: str) -> str:
        lo, hi = ci(b, a)
        top = 1 + sum(ci(b, o)[0] > hi for o in new)
        low = len(new) - sum(ci(b, o)[1] < lo for o in new)
        return str(top) if top == low else f"{top}-{low}"

    head = ["agent", "v1 test IQM", f"{here} IQM", "rank v1", f"rank {here}", "here vs v1"]
    cells = []
    for a in sorted(new, key=lambda a: -float(new[a]["iqm"])):
        (o_lo, o_hi), (n_lo, n_hi) = ci(old, a), ci(new, a)
        word = "higher" if n_lo > o_hi else "lower" if n_hi < o_lo else "no difference detected"
        cells.append([a, cell(old, a), cell(new, a), rank(old, a), rank(new, a), word])
    why = "ranks and verdicts from disjoint 95 % CIs of IQM (norm.), unpaired (other configs)"
    return ["", f"Against the v1 test board ({why}):", "", *report.markdown_table(head, cells)]


def _profile(norm: dict[str, list[np.ndarray]], path: Path, title: str) -> None:
    plt = pyplot()
    taus = np.linspace(-1.0, 1.2, 221)
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (label, scores) in enumerate(norm.items()):
        ax.plot(taus, stats.performance_profile(scores, taus), label=label, color=plt.cm.tab10(i))
    ax.set(xlabel="normalised final U  tau", ylabel="fraction of runs > tau", title=title)
    ax.legend(fontsize=7)
    save(fig, path)


def frozen_entry(env_id: str, rows: list[dict], size: int, version: str = "v1") -> str:
    """``env_id``'s entry of ``rlhf_envs/data/families_VERSION.json`` (JSON) from the check rows."""
    from rlhf_envs import families

    knobs = list(families.VERSION_DISTRIBUTIONS[version][env_id])
    entry = {}
    for split in families.SPLITS:
        ok = [r for r in rows if r["split"] == _names(version)[0] + split and r["learnable"]][:size]
        entry[split] = {
            "candidates": [r["candidate"] for r in ok],
            "configs": [{k: r[k] for k in knobs} for r in ok],
        }
    return json.dumps({env_id: entry}, indent=2)


def main(argv: list[str] | None = None) -> int:
    p = cli.command("baselines.family_board", __doc__)
    sub = p.add_subparsers(dest="command", required=True, parser_class=cli.Parser)
    for cmd, what in (
        ("check", "learnability and collapse of a family's candidates"),
        ("tune", "tune on the train split"),
        ("board", "board on the test split"),
    ):
        c = sub.add_parser(cmd, help=what, parents=[cli.WORKERS, cli.PUBLISH])
        c.add_argument("env", help="RLHFBlindSpot-v0 or RLHFNeuralBlindSpot-v0")
        c.add_argument("--version", default="v1", help="family version: v1 (default) or v2")
        c.add_argument("--out", default=f"runs/families/{cmd}", help="run folders")
        cli.add_results(c, "leaderboard/families", "its CSV, JSON, Markdown and figure files")
        cli.add_batch_flag(c)
        if cmd == "check":
            c.add_argument("--split", default="both", help="train, test or both (default)")
            c.add_argument("--candidates", type=cli.positive_int, default=24, help="per split")
        else:
            c.add_argument(
                "--dtype",
                default="float64",
                help="the followers' floating-point type: float64 (default, the committed "
                "boards) or float32 (opt-in, faster where the reward models' arithmetic dominates)",
            )
        if cmd == "tune":
            c.add_argument("--agents", default=None, help="comma-separated subset of GRID")
        if cmd == "board":
            c.add_argument(
                "--site", metavar="DIR", help="also write the static site (baselines.site)"
            )
            c.add_argument(
                "--hidden",
                action="store_true",
                help="board on a hidden split drawn with the secret in the environment variable "
                "RLHF_JUDGE_SECRET (held by the judge only; revealed after the board)",
            )
    start = time.perf_counter()
    try:
        args = p.parse_args(argv)
        import baselines.judge  # noqa: F401  (takes the hidden split's secret, at import)
        from rlhf_envs import families

        if args.env not in families.DISTRIBUTIONS:
            raise CLIError(f"env: {args.env!r} has no family; families: {list(families.ENV_INDEX)}")
        if args.version not in families.VERSIONS:
            raise CLIError(f"--version must be one of {families.VERSIONS}, got {args.version!r}")
        cli.check_workers(args)
        cli.refuse_committed(args.results, "--results", args.force)
        res, out = Path(args.results), Path(args.out)
        if args.command == "check":
            if args.split not in (*families.SPLITS, "both"):
                raise CLIError(f"--split must be train, test or both, got {args.split!r}")
            splits = list(families.SPLITS) if args.split == "both" else [args.split]
            rows = check(args.env, splits, args.candidates, args, out, res, args.version)
            for split in splits:
                part = [r for r in rows if r["split"].endswith(split)]
                ok = [r for r in part if r["learnable"]]
                col = [r for r in ok[: families.SIZE] if r["naive_collapses"]]
                print(
                    f"{args.env} {split}: {len(ok)}/{len(part)} candidates learnable; naive "
                    f"collapses in {len(col)}/{min(len(ok), families.SIZE)} of the first "
                    f"{families.SIZE} learnable",
                    file=sys.stderr,
                )
            print(frozen_entry(args.env, rows, families.SIZE, args.version))
        else:
            from rlhf_envs.core import DTYPES

            if args.dtype not in DTYPES:
                raise CLIError(f"--dtype must be one of {DTYPES}, got {args.dtype!r}")
            res.mkdir(parents=True, exist_ok=True)
            if args.command == "tune":
                agents = args.agents.split(",") if args.agents else None
                unknown = sorted(set(agents or []) - set(GRID))
                if unknown:
                    raise CLIError(f"--agents: {unknown} not in the grid; known: {list(GRID)}")
                frozen = tune(args.env, args, out, res, agents, args.dtype, args.version)
                print(json.dumps(frozen["settings"]))
            else:
                if args.hidden and families.secret() is None:
                    raise CLIError(f"--hidden needs a secret in {families.SECRET_VARIABLE}")
                print(board(args.env, args, out, res, args.dtype, args.hidden, args.version))
                if args.site:  # the static site of RESULTS/.. (it reads RESULTS/families/)
                    print(f"wrote {write_site(res.parent, Path(args.site))}")
    except CLIError as e:
        return p.fail(e)
    print(f"wall time {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
