"""Build the leaderboard from run folders: ``results/LEADERBOARD.md``, CSVs and figures.

    python -m baselines.leaderboard [--runs runs] [--results leaderboard] [--force] [--allow-mixed]
        [--verify K] [--tabulate CSV] [--site DIR]

Per (env, agent) over seeds: the table that ``LEADERBOARD.md`` explains, figures of true utility
per round, of cost against result and (linear env) of the signal-vs-noise trajectory, and the
generated comparison block (each method against the baselines and its budget-matched controls).
``RESULTS/notes/ENV_ID.md``, a hand-written reading, is shown under its env's table. Runs of different code or package versions
are refused unless ``--allow-mixed``. Each run's record is checked
(:func:`baselines.results.check_run`); ``--verify K`` also replays K runs of each row.
"""

from __future__ import annotations

import json
import sys
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from baselines import cli, results, stats
from baselines.plan import CLIError
from baselines.plot import pyplot, save
from baselines.site import write_site


def _agent_name(run_name: str) -> str:
    """The agent of a run folder name ``AGENT[+ALGO][@TAG]``."""
    return run_name.split("@")[0].split("+")[0]


def _order(run_name: str) -> int:
    from agents import registry

    names = list(registry.BUILTIN)
    base = _agent_name(run_name)
    return names.index(base) if base in names else len(names)


def _paper_reference(env_id: str, run_name: str) -> str:
    from agents import registry

    cls = registry.BUILTIN.get(run_name)  # only runs with the paper's settings: no +ALGO, @TAG
    return cls.paper_reference.get(env_id, "-") if cls is not None else "-"


FIGURE_KINDS = ("_true_utility.png", "_cost_frontier.png", "_signal_noise.png")


def check_duplicates(df: pd.DataFrame) -> None:
    dup = df[df.duplicated(["env_id", "run_name", "seed"], keep=False)]
    if len(dup):
        first = dup.sort_values("folder").iloc[:2].folder.tolist()
        raise CLIError(
            f"the same (env, agent, seed) was found in more than one folder ({first[0]} and "
            f"{first[1]}); point --runs at one sweep's folder"
        )


def check_provenance(df: pd.DataFrame) -> None:
    for env_id, part in df.groupby("env_id"):
        for col, what in (("code_hash", "code versions"), ("versions", "package versions")):
            values = sorted(part[col].unique())
            if len(values) > 1:
                raise CLIError(
                    f"{env_id}: runs come from {len(values)} different {what} ({', '.join(v[:60] for v in values)}); "
                    "rerun them with one version or pass --allow-mixed"
                )


def _fmt(mean: float, lo: float, hi: float) -> str:
    return f"{mean:.2f} [{lo:.2f}, {hi:.2f}]"


MAIN_COLUMNS = (
    "final_true_utility",
    "final_block_true_utility",
    "auc_true_utility",
    "collapse_drop",
    "final_gap",
)
# present for some runs only: SB3 runs (deterministic evaluation), the contextual env (clusters)
OPTIONAL_HEADERS = {
    "eval_true_utility": "det. U",
    "eval_true_utility_blind_cluster": "det. U, blind cluster",
    "eval_true_utility_other_clusters": "det. U, other clusters",
    "final_sample_true_utility_blind_cluster": "final U, blind cluster",
    "final_sample_true_utility_other_clusters": "final U, other clusters",
}
OPTIONAL_COLUMNS = tuple(OPTIONAL_HEADERS)
POI_COLUMN = "final_block_true_utility"


def table(df: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (env_id, label), part in df.groupby(["env_id", "run_name"]):
        row = {"env_id": env_id, "agent": label, "seeds": len(part)}
        for col in MAIN_COLUMNS + OPTIONAL_COLUMNS:
            if col not in part or part[col].isna().all():
                continue
            x = part[col].to_numpy(dtype=float)
            row[col], row[col + "_ci_low"], row[col + "_ci_high"] = map(float, stats.t_ci(x))
            row[col + "_iqm"] = stats.iqm(x)
        reads = part["reads"].dropna().unique() if "reads" in part else []
        row["reads"] = " / ".join(sorted(reads)) or "?"
        for col in ("labels_used", "oracle_queries", "oracle_grad_queries"):
            row[col] = part[col].mean() if col in part else 0.0
        # every labeler call: labels + value queries + d + 1 per gradient query
        calls = part["labeler_calls"] if "labeler_calls" in part else part["labels_used"]
        row["labeler_calls"] = calls.mean()
        row["wall_time_s"] = part["wall_time_s"].mean()
        rows.append(row)
    out = pd.DataFrame(rows)
    out["order"] = out["agent"].map(_order)
    return out.sort_values(["env_id", "order", "agent"]).drop(columns="order")


def comparisons(df: pd.DataFrame, n_boot: int = 2000) -> pd.DataFrame:
    """Each method against the baselines and its budget-matched controls on final-block true
    utility (:func:`baselines.stats.compare`; P(improvement): Agarwal et al., arXiv 2108.13264)."""
    from agents import registry

    methods = [n for n, c in registry.BUILTIN.items() if c.role == "method"]
    baselines = registry.with_role("baseline")
    outside = {_agent_name(name) for name in df["run_name"]} - set(registry.BUILTIN)  # plugins
    methods += sorted(outside)
    rows = []
    for env_id, part in df.groupby("env_id"):
        finals = {label: g[POI_COLUMN].to_numpy() for label, g in part.groupby("run_name")}
        # compare within one optimiser: METHOD+ppo against BASELINE+ppo, white-box with white-box
        suffixes = sorted({label.partition("+")[1:] for label in finals})
        pairs = [
            ("".join((a, *suf)), "".join((b, *suf, *extra)))
            for suf in suffixes
            for a in methods
            for b in [*baselines, "oracle-values"]
            for extra in ((), (f"@budget={a}",))  # and its budget-matched controls, if run
            if extra or b != "oracle-values"
        ]
        pairs += [  # the other baselines and naive's budget-matched controls against naive
            (b, "".join(("naive", *suf)))
            for suf in suffixes
            for b in ["".join((x, *suf)) for x in baselines if x != "naive"]
            + ["".join(("naive", *suf, f"@budget={a}")) for a in methods]
        ]
        for a, b in pairs:
            if a not in finals or b not in finals:
                continue
            # each pair its own bootstrap stream: a row added to the table changes no other row
            rng = np.random.default_rng([0, zlib.crc32(f"{env_id} {a} {b}".encode())])
            compared = stats.compare(finals[a], finals[b], n_boot, rng)
            rows.append(dict(page="leaderboard", env=env_id, a=a, b=b, **compared))
    return pd.DataFrame(rows)


def verify_rows(df: pd.DataFrame, k: int) -> dict[tuple[str, str], str]:
    """Per (env, run name): replay ``k`` of its runs (drawn with seed 0) as ``baselines.run
    --from`` does; "yes (n replayed)" if each reproduces, else "NO (j of n not reproduced)"."""
    import tempfile

    from baselines.run import main as run

    rng, marks = np.random.default_rng(0), {}
    for key, part in df.groupby(["env_id", "run_name"]):
        picked = rng.choice(sorted(part.folder), size=min(k, len(part)), replace=False)
        with tempfile.TemporaryDirectory() as tmp:
            args = ["--out", tmp, "--no-progress", "--quiet"]
            bad = sum(run(["--from", str(Path(f) / "config.json"), *args]) != 0 for f in picked)
        n = len(picked)
        marks[key] = f"NO ({bad} of {n} not reproduced)" if bad else f"yes ({n} replayed)"
    return marks


def markdown(tab: pd.DataFrame, df: pd.DataFrame, poi: pd.DataFrame, notes: Path) -> str:
    lines = [
        "# Leaderboard",
        "",
        "Generated by `python -m baselines.leaderboard` from the run folders; do not edit by hand.",
        "Mean over seeds with its 95 % Student-t CI in brackets; IQM = interquartile mean.",
        "Final U: true utility of the responses of the last round (white-box agents: the",
        "policy's mean response; SB3 agents: the mean of the responses sampled in that round).",
        "Final block: mean true utility over the last 5 % of rounds (1/20 of the run), less noisy",
        "for sampled responses; the probabilities of improvement compare it. Ideal: 10.",
        "AUC: true utility averaged over all rounds. Drop: collapse, the height of the peak block",
        "(the run cut into 20 blocks; peak chosen on even rounds, measured on odd rounds, so that",
        "noise alone gives 0 on average) minus the final block.",
        "Gap: proxy reward minus true utility at the end. Labels: the RM's labels per run.",
        "Queries: the agent's own calls on the labeler or the truth, as value queries / gradient",
        "queries (a gradient query on a d-dim response costs d + 1 value queries by forward",
        "differences). Labeler calls: labels + value queries + (d + 1) x gradient queries.",
        "AGENT@budget=X rows are X's generated budget-matched controls: naive labelling fresh",
        "responses with X's extra calls, the truth spent as value queries by an evolution strategy;",
        "the cost-frontier figure plots final U against labeler calls.",
        "Reads: what the agent declares it reads (agents.registry): the current or initial RM,",
        "the RM's labelled buffer, labeler values or gradients on new responses, or the truth.",
        "det. U (SB3 agents): mean true utility of 64 responses of the final policy acting",
        "deterministically, measured on a copy of the env (as SB3's `evaluate_policy`).",
        "",
    ]
    v = "verified" in tab
    for env_id, part in tab.groupby("env_id", sort=True):
        commits = sorted(df[df.env_id == env_id]["git_commit"].unique())
        codes = sorted(df[df.env_id == env_id]["code_hash"].unique())
        lines += [
            f"## {env_id}",
            "",
            f"Code commit: {', '.join(c[:12] for c in commits)}; code hash: {', '.join(codes)}.",
            "",
            "| agent | reads | seeds | final U | final U IQM | final block | AUC | drop | gap | labels | queries (value / grad) | labeler calls | s/run | paper ref. final U |"
            + (" verified (replayed) |" if v else ""),
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if v else ""),
        ]
        for _, r in part.iterrows():
            lines.append(
                f"| {r.agent} | {r.reads} | {r.seeds} | "
                f"{_fmt(r.final_true_utility, r.final_true_utility_ci_low, r.final_true_utility_ci_high)} | "
                f"{r.final_true_utility_iqm:.2f} | "
                f"{_fmt(r.final_block_true_utility, r.final_block_true_utility_ci_low, r.final_block_true_utility_ci_high)} | "
                f"{_fmt(r.auc_true_utility, r.auc_true_utility_ci_low, r.auc_true_utility_ci_high)} | "
                f"{_fmt(r.collapse_drop, r.collapse_drop_ci_low, r.collapse_drop_ci_high)} | "
                f"{r.final_gap:.2f} | {r.labels_used:.0f} | "
                f"{r.oracle_queries:.0f} / {r.oracle_grad_queries:.0f} | {r.labeler_calls:.0f} | "
                f"{r.wall_time_s:.2f} | {_paper_reference(env_id, r.agent)} |"
                + (f" {r.verified} |" if v else "")
            )
        extra = [c for c in OPTIONAL_COLUMNS if c in part and part[c].notna().any()]
        if extra:
            lines += [
                "",
                "| agent | " + " | ".join(OPTIONAL_HEADERS[c] for c in extra) + " |",
                "|---" * (len(extra) + 1) + "|",
            ]
            for _, r in part.iterrows():
                cells = [
                    _fmt(r[c], r[c + "_ci_low"], r[c + "_ci_high"]) if pd.notna(r[c]) else "-"
                    for c in extra
                ]
                lines.append(f"| {r.agent} | " + " | ".join(cells) + " |")
        lines += ["", f"![true utility](figures/{env_id}_true_utility.png)", ""]
        lines += [f"![cost frontier](figures/{env_id}_cost_frontier.png)", ""]
        if env_id == "RLHFBlindSpot-v0":
            lines += [f"![signal vs noise](figures/{env_id}_signal_noise.png)", ""]
        sub = poi[poi.env == env_id] if len(poi) else poi
        if len(sub):
            lines += ["Each method against each baseline and its budget-matched controls:", ""]
            lines += [*stats.comparison_block(sub.to_dict("records"), "final-block U"), ""]
        note = notes / f"{env_id}.md"
        if note.exists():
            lines += ["### Reading", "", note.read_text().strip(), ""]
    return "\n".join(lines) + "\n"


def figures(df: pd.DataFrame, out: Path) -> list[Path]:
    plt = pyplot()
    out.mkdir(parents=True, exist_ok=True)
    made = []
    for env_id, part in df.groupby("env_id"):
        if part.metrics.isna().any():  # tabulated from a runs.csv: its figures stay as they are
            continue
        curves = {}
        fig, ax = plt.subplots(figsize=(9, 4.5))
        names = sorted(part.run_name.unique(), key=lambda a: (_order(a), a))
        for i, agent in enumerate(names):
            ms = list(part[part.run_name == agent].metrics)
            u = np.stack([m.get("true_utility", m.get("sample_true_utility")) for m in ms])
            curves[agent] = ms
            lo, hi = stats.bootstrap_ci(u, n_boot=1000)
            x = np.arange(1, u.shape[1] + 1)
            style = {"color": plt.cm.tab20(i % 20), "ls": "--" if "@" in agent else "-"}
            ax.plot(x, u.mean(0), label=f"{agent} (n={len(u)})", **style)
            ax.fill_between(x, lo, hi, alpha=0.15, color=style["color"])
        what = "policy mean" if "true_utility" in ms[0] else "sampled responses"
        ax.set(xlabel="RM round", ylabel=f"true utility ({what}), mean and 95 % CI", title=env_id)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
        made.append(_cost_frontier(env_id, table(part), out, plt))
        made.append(save(fig, out / f"{env_id}_true_utility.png"))
        if env_id == "RLHFBlindSpot-v0":
            cfg = json.loads((Path(part.folder.iloc[0]) / "config.json").read_text())
            made.append(
                _signal_noise(curves, cfg["env_kwargs"], out / f"{env_id}_signal_noise.png", plt)
            )
    return made


def _cost_frontier(env_id: str, tab: pd.DataFrame, out: Path, plt) -> Path:
    """Final true utility (mean, 95 % CI) against labeler calls per run, one point per row."""
    fig, ax = plt.subplots(figsize=(8, 5))
    seen: dict[tuple[float, float], int] = {}  # labels of points that nearly coincide stack up
    for _, r in tab.sort_values(["labeler_calls", "final_true_utility"]).iterrows():
        err = [[r.final_true_utility - r.final_true_utility_ci_low],
               [r.final_true_utility_ci_high - r.final_true_utility]]  # fmt: skip
        marker = "s" if "@budget=" in r.agent else "o"
        ax.errorbar(r.labeler_calls, r.final_true_utility, yerr=err, fmt=marker, capsize=3)
        spot = (round(np.log10(r.labeler_calls), 1), round(r.final_true_utility * 2) / 2)
        k = seen[spot] = seen.get(spot, -1) + 1
        ax.annotate(r.agent, (r.labeler_calls, r.final_true_utility), fontsize=7,
                    xytext=(5, 3 + 9 * k), textcoords="offset points")  # fmt: skip
    ax.set_xscale("log")
    ax.margins(x=0.35)
    ax.set(
        xlabel="labeler calls per run: labels + value queries + (d + 1) x gradient queries",
        ylabel="final true utility (mean, 95 % CI)",
        title=f"{env_id}: result against its cost\n(squares: budget-matched controls)",
    )
    return save(fig, out / f"{env_id}_cost_frontier.png")


def _signal_noise(curves, env_kwargs, path: Path, plt) -> Path:
    from rlhf_envs import BlindSpotConfig

    # landscape over (signal norm s, noise norm n), aligned: ||y - y*||^2 = (s - ||y*||)^2 + n^2
    c = BlindSpotConfig.from_kwargs(**env_kwargs)
    y_star_norm = abs(c.target_value) * np.sqrt(c.signal_dims)
    grid = np.linspace(0, 1.6 * y_star_norm, 200)
    s, n = np.meshgrid(grid, grid)
    u = c.utility_scale * np.exp(-c.utility_width * ((s - y_star_norm) ** 2 + n**2))
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    cs = ax.contourf(s, n, u, levels=20, cmap="Greys")
    fig.colorbar(cs, ax=ax, label="true utility (aligned signal)")
    for agent, ms in curves.items():
        sig = np.mean([m["signal_norm"] for m in ms], 0)
        noi = np.mean([m["noise_norm"] for m in ms], 0)
        ax.plot(sig, noi, label=agent)
        ax.plot(sig[-1], noi[-1], "o", color=ax.lines[-1].get_color())
    ax.set(xlabel="signal norm ||y[:k]||", ylabel="noise norm ||y[k:]||", title="mean trajectory")
    ax.legend(fontsize=8)
    return save(fig, path)


def main(argv: list[str] | None = None) -> int:
    p = cli.command("baselines.leaderboard", __doc__, cli.PUBLISH)
    p.add_argument("--runs", default="runs", help="folder of run folders (default runs/)")
    cli.add_results(p, "leaderboard", "the table, CSVs and figures")
    p.add_argument("--allow-mixed", action="store_true", help="allow runs from different commits")
    p.add_argument(
        "--verify",
        type=cli.positive_int,
        metavar="K",
        help="replay K random runs per row (seeded; as baselines.run --from, in a temporary "
        "folder) and mark each row verified or not in the table",
    )
    p.add_argument("--site", metavar="DIR", help="also write the static site (baselines.site)")
    why = "also tabulate a published runs.csv's rows whose (env, agent) is not under --runs"
    p.add_argument("--tabulate", metavar="CSV", help=why)
    try:
        args = p.parse_args(argv)
        out = Path(args.results)
        cli.refuse_committed(out, "--results", args.force)
        df = results.load_runs([args.runs], metrics=True)
        if df.empty:
            raise CLIError(f"no finished runs under {args.runs}")
        if args.tabulate:
            try:  # pandas' parse errors are ValueErrors; no env_id column: AttributeError
                old = pd.read_csv(args.tabulate).set_index(["env_id", "run_name"])
                old = old.drop(df.set_index(["env_id", "run_name"]).index, errors="ignore")
            except (OSError, ValueError, AttributeError):
                raise CLIError(f"--tabulate: cannot read {args.tabulate} as a runs.csv") from None
            old = old.reset_index().assign(metrics=None, folder="", versions="")
            df = pd.concat([df, old], ignore_index=True)
        check_duplicates(df)
        if not args.allow_mixed:
            check_provenance(df)
    except CLIError as e:
        return p.fail(e)
    tab = table(df)
    if args.verify:
        marks = verify_rows(df, args.verify)
        tab["verified"] = [marks[k] for k in zip(tab.env_id, tab.agent, strict=True)]
    made = figures(df, out / "figures")
    kept = tuple(e for e, part in df.groupby("env_id") if part.metrics.isna().any())
    fresh = {m.resolve() for m in made} | {
        f.resolve() for e in kept for f in out.glob(f"figures/{e}_*")
    }
    for old in (out / "figures").glob("*.png"):  # figures of envs no longer in the table
        if old.resolve() not in fresh and old.name.endswith(FIGURE_KINDS):
            old.unlink()
    results.atomic_write_text(out / "leaderboard.csv", tab.to_csv(index=False, float_format="%.6g"))
    per_run = df.drop(columns=["folder", "versions", "metrics"]).sort_values(
        ["env_id", "agent", "seed"]
    )
    results.atomic_write_text(out / "runs.csv", per_run.to_csv(index=False, float_format="%.6g"))
    poi = comparisons(df)
    results.atomic_write_text(out / "comparisons.csv", poi.to_csv(index=False, float_format="%.6g"))
    text = markdown(tab, df, poi, out / "notes")
    llm = out / "LLM_TRACK.md"  # written by python -m llm_track.evaluate
    if llm.exists():
        text += "\n" + llm.read_text().replace("## LLM track", "## LLM track (tiny preset)", 1)
        note = out / "notes" / "LLM_TRACK.md"
        if note.exists():
            text += "\n### Reading\n\n" + note.read_text().strip() + "\n"
    results.atomic_write_text(out / "LEADERBOARD.md", text)
    print(f"wrote {out / 'LEADERBOARD.md'} ({len(df)} runs, {len(tab)} rows)")
    if args.site:
        print(f"wrote {write_site(out, Path(args.site))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
