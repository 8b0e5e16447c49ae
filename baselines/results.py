"""Run folders, atomic writes, CSV/JSON files and provenance records of both tracks.

The LLM track (``llm_track``) writes its files through this module too; the statistics of the
tables are in ``baselines.stats``.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import hashlib
import io
import json
import os
import platform
import secrets
import subprocess
import sys
import traceback
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

#: the columns of a white-box run's metrics.csv, in order (SB3 runs: the ``sample_`` ones)
METRIC_COLUMNS = ["round", "true_utility", "proxy_reward", "gap", "sample_true_utility"]
METRIC_COLUMNS += ["sample_proxy_reward", "rm_error", "signal_norm", "noise_norm", "labels_used"]
METRIC_COLUMNS += ["oracle_queries", "oracle_grad_queries", "oracle_value_equivalents"]

COUNTERS = ("labels_used", "oracle_queries", "oracle_grad_queries", "oracle_value_equivalents")
#: one counter per query kind (rlhf_envs.core.QUERY_COLUMNS)
COUNTERS += ("labeler_value_queries", "labeler_grad_queries")
COUNTERS += ("truth_value_queries", "truth_grad_queries")


# -- files -------------------------------------------------------------------------------------
def atomic_write_text(path: Path | str, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through a fsync'd temporary file and ``os.replace``.

    A reader sees the old file or the new one, never a torn one; the mode is a plain ``open``'s.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # 0o666 less the umask
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path | str, obj: Any, default: Any = None) -> None:
    """Indented, key-sorted JSON; ``default`` as in ``json.dumps`` (the LLM track passes str)."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=default) + "\n")


def read_json(path: Path | str) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_csv(path: Path | str, rows: list[dict[str, Any]], lineterminator: str = "\r\n") -> None:
    """Rows of dicts as CSV (header from the first row's keys, values by ``str``); no rows: an
    empty file. The line end defaults to the csv module's (the LLM track's ``metrics.csv``)."""
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator=lineterminator)
        w.writeheader()
        w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def _number(v: str) -> Any:
    for kind in (int, float):
        with contextlib.suppress(ValueError):
            return kind(v)
    return v


def read_csv(path: Path | str) -> list[dict[str, Any]]:
    """Rows of a CSV file as dicts, numbers parsed back (int where possible, else float)."""
    with open(path, encoding="utf-8", newline="") as f:
        return [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)]


def metrics_csv(history: dict[str, np.ndarray], column: int) -> str:
    """Per-round metrics of one experiment as CSV text (floats written with ``repr``)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    known = [k for k in METRIC_COLUMNS[1:] if k in history]  # SB3 runs record samples only
    extra = [k for k in history if k not in METRIC_COLUMNS]  # optional columns, in order
    w.writerow(["round", *known, *extra])
    for t in range(len(next(iter(history.values())))):  # one row per round
        row: list[Any] = [t + 1]
        for key in known + extra:
            v = history[key][t, column]
            row.append(int(v) if key in COUNTERS else repr(float(v)))
        w.writerow(row)
    return buf.getvalue()


def read_metrics(path: Path) -> dict[str, np.ndarray]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return {k: np.array([float(r[k]) for r in rows]) for k in rows[0]} if rows else {}


def run_dir(out: Path, env_id: str, agent: str, seed: int) -> Path:
    return Path(out) / env_id / agent / f"seed_{seed}"


def config_hash(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


MANIFEST = "manifest.json"


def file_record(path: Path) -> dict[str, Any]:
    """``{"sha256", "bytes"}`` of a file, plus ``"rows"`` (data lines) for a CSV file."""
    data = Path(path).read_bytes()
    rec: dict[str, Any] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    if Path(path).suffix == ".csv":
        rec["rows"] = max(0, len(data.splitlines()) - 1)
    return rec


def write_manifest(folder: Path, names: list[str]) -> None:
    """Seal a run folder: the hashes, sizes and row counts of ``names``, written last (a folder
    is finished only while every file matches, :func:`verify`)."""
    folder = Path(folder)
    atomic_write_json(folder / MANIFEST, {"files": {n: file_record(folder / n) for n in names}})


def verify(folder: Path) -> str:
    """``""`` if the run folder is sealed and every sealed file matches, else the problem."""
    folder = Path(folder)
    try:
        files = read_json(folder / MANIFEST)["files"]
        if not isinstance(files, dict) or "summary.json" not in files:
            return f"{MANIFEST} lists no summary.json"
    except FileNotFoundError:
        return f"no {MANIFEST} (unfinished, or written before run folders were sealed)"
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"{MANIFEST} unreadable ({type(e).__name__})"
    for name, want in files.items():
        if "/" in name or "\\" in name or name.startswith("."):
            return f"{MANIFEST} names a file outside the folder: {name[:60]!r}"
        try:
            got = file_record(folder / name)
        except OSError:
            return f"{name} is missing"
        if not isinstance(want, dict) or got.get("sha256") != want.get("sha256"):
            return f"{name} does not match its manifest (changed or damaged)"
    return ""


def run_state(folder: Path, digest: str) -> tuple[str, str]:
    """``(state, why)`` of a run folder for a run with settings hash ``digest``: ``"done"``
    (verified, ok, same settings), ``"other"`` (other settings), ``"damaged"`` (``why`` says
    what), or ``"todo"`` (nothing finished there, or a failed run to redo)."""
    folder = Path(folder)
    if not (folder / "summary.json").exists() and not (folder / MANIFEST).exists():
        return "todo", ""
    why = verify(folder)
    if why:
        return "damaged", why
    try:
        done = read_json(folder / "summary.json")
    except (OSError, ValueError) as e:
        return "damaged", f"summary.json unreadable ({type(e).__name__})"
    if not isinstance(done, dict):
        return "damaged", "summary.json is not a JSON object"
    if done.get("status") != "ok":
        return "todo", ""
    return ("done", "") if done.get("config_hash") == digest else ("other", "")


class RecordError(Exception):
    """Why a run folder is not as the harness wrote it (:func:`check_run`)."""


#: metrics.csv columns that may hold NaN (an SB3 run's evaluation is in its last row only; the
#: contextual env's per-cluster columns are NaN in rounds without a response of that cluster)
MAY_BE_NAN = ("eval_", "sample_true_utility_")


def recheck(folder: Path, s: dict[str, Any]) -> str:
    """``""`` if the finished run's metrics are finite and its summary ``s`` is what
    :func:`summarise` makes of them, else the first disagreement.

    ``repr`` floats read back bit for bit, but the sums' order may differ (a few ulps), so floats
    must agree to 1e-9 relative (1e-12 absolute): below any edit a table shows.
    """
    m = read_metrics(folder / "metrics.csv")
    nan_ok = {k: k.startswith(MAY_BE_NAN) for k in m}
    bad = [k for k, v in m.items() if not (np.isfinite(v) | nan_ok[k] & np.isnan(v)).all()]
    if bad:
        return f"metrics.csv holds non-finite values in {', '.join(bad[:3])}"
    if (n := len(m.get("round", ()))) != s.get("rounds"):
        return f"metrics.csv has {n} rounds, the summary says {s.get('rounds')}"
    for key, want in summarise({k: v[:, None] for k, v in m.items() if k != "round"}, 0).items():
        got = s.get(key)
        if isinstance(want, float) and type(got) in (int, float):
            same = (want != want and got != got) or abs(want - got) <= 1e-9 * abs(want) + 1e-12
        else:
            same = type(got) is type(want) and got == want
        if not same:
            return f"summary.json's {key} ({got!r}) is not what metrics.csv gives ({want!r})"
    return ""


def check_run(folder: Path, statuses: tuple[str, ...] = ("ok",)) -> dict[str, Any] | None:
    """The summary of the run folder ``.../ENV/RUN_NAME/seed_S`` with ``git_commit``, ``code_hash``,
    ``versions`` and ``folder`` (None if its status is not in ``statuses``), or ``RecordError``
    (:func:`verify`, :func:`recheck`, an unknown env, a record naming another folder)."""
    import rlhf_envs

    if why := verify(folder):
        raise RecordError(why)
    s, cfg = read_json(folder / "summary.json"), read_json(folder / "config.json")
    if not isinstance(s, dict) or not isinstance(cfg, dict):
        raise RecordError("summary.json or config.json is not a JSON object")
    if s.get("status") not in statuses:
        return None
    if s.get("env_id") not in rlhf_envs.ENV_IDS:
        raise RecordError(f"unknown env_id {str(s.get('env_id'))[:60]!r}")
    where = Path(folder).resolve()
    layout = (where.parent.parent.name, where.parent.name, where.name)
    for record in (s, cfg):
        named = (record.get("env_id"), record.get("run_name"), f"seed_{record.get('seed')}")
        if named != layout:
            raise RecordError(f"it names {'/'.join(map(str, named))[:120]!r}, not its own folder")
    if s.get("config_hash") != cfg.get("config_hash"):
        raise RecordError("summary.json and config.json have different config hashes")
    if s["status"] == "ok" and (why := recheck(folder, s)):
        raise RecordError(why)
    s["git_commit"], s["code_hash"] = cfg["git_commit"], cfg["code_hash"]
    s["versions"] = json.dumps(cfg.get("versions", {}), sort_keys=True)
    s["folder"] = str(folder)
    return s


def load_runs(paths: list, statuses: tuple[str, ...] = ("ok",), metrics: bool = False):
    """The sealed run folders at or below ``paths`` (``.../seed_S``) as a ``pandas.DataFrame``.

    One row per run whose status is in ``statuses``: :func:`check_run`'s record, with
    ``metrics`` its ``metrics.csv`` (a dict of column arrays). A folder that fails
    :func:`check_run` is skipped with one line on stderr; other statuses are left out silently.
    """
    import pandas as pd

    found: dict[Path, Path] = {}
    for p in map(Path, paths):
        here = [p] if (p / "summary.json").is_file() else []
        for folder in here + sorted(s.parent for s in p.rglob("seed_*/summary.json")):
            found.setdefault(folder.resolve(), folder)
    rows = []
    for folder in found.values():
        try:
            if (s := check_run(folder, statuses)) is None:
                continue
            if metrics:
                s["metrics"] = read_metrics(folder / "metrics.csv")
        except RecordError as e:
            why = str(e)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            why = f"{type(e).__name__}: {str(e)[:120]}"
        else:
            rows.append(s)
            continue
        print(f"skipping {folder}: {why}", file=sys.stderr)
    return pd.DataFrame(rows)


class RunLock:
    """An exclusive, non-blocking lock on a run folder (``fcntl.flock`` on ``.lock`` in it).

    A held lock: ``False`` from :meth:`acquire`. The kernel drops it when its holder exits, even
    by SIGKILL (no stale locks). Without ``fcntl`` (Windows) every lock is granted.
    """

    def __init__(self, folder: Path):
        self.path = Path(folder) / ".lock"
        self.fd: int | None = None

    def acquire(self) -> bool:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self.fd = fd
        return True

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = None


# -- provenance --------------------------------------------------------------------------------
BASELINE_PACKAGES = ("gymnasium", "numpy", "torch", "stable-baselines3")
LLM_PACKAGES = ("torch", "transformers", "peft", "tokenizers", "safetensors", "numpy")


def package_versions(names: tuple[str, ...] = BASELINE_PACKAGES) -> dict[str, str]:
    """Python's version and those of the packages ``names`` ("not installed" if missing)."""
    out = {"python": platform.python_version()}
    # the suite's own code is identified by code_hash() and the git commit, not by its pip install
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


RESULT_CODE = ("rlhf_envs", "agents", "baselines/configs", "baselines/run.py", "baselines/plan.py")
RESULT_CODE += ("baselines/execute.py", "baselines/sb3_runner.py", "baselines/results.py")
_ROOT = Path(__file__).resolve().parent.parent  # the repository


@functools.cache
def code_hash() -> str:
    """Hash of the code that determines a run's files: envs, agents, the runner, its YAML.

    Results are comparable when this matches, whatever the commit. Computed once per process.
    """
    h = hashlib.sha256()
    for part in RESULT_CODE:
        path = _ROOT / part
        for f in [path] if path.is_file() else sorted(path.rglob("*")):
            if f.suffix in (".py", ".yaml") and "__pycache__" not in f.parts:
                h.update(str(f.relative_to(_ROOT)).encode())
                h.update(f.read_bytes())
    return h.hexdigest()[:16]


def git_commit() -> str:
    try:
        cmd = ["git", "rev-parse", "HEAD"]
        git = subprocess.run(cmd, cwd=_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return git.stdout.strip() or "unknown"


def versions_record(names: tuple[str, ...] = LLM_PACKAGES) -> dict[str, str]:
    """One record of package versions, the platform and the git commit (the LLM track's)."""
    return {**package_versions(names), "platform": platform.platform(), "git_commit": git_commit()}


# -- per-run summary -------------------------------------------------------------------------
def summarise_history(u: np.ndarray, blocks: int = 20) -> dict[str, float]:
    """Collapse metrics of one true-utility curve (one value per round).

    On a noisy curve the raw "peak minus final" is biased upward, so the drop is read on
    ``blocks`` blocks of rounds, cross-fitted: the peak block is *chosen* on even rounds' means and
    *measured* on its odd rounds; ``drop`` is that height minus the last block's mean (a flat
    curve's expected drop is 0). Under ``2 * blocks`` rounds: one round per block, no
    cross-fitting. ``final_true_utility`` stays the last round's value.
    """
    u = np.asarray(u, dtype=float)
    w = len(u) // blocks
    if w < 2:
        peak = int(np.argmax(u))
        height, end, peak_round = u[peak], u[-1], peak + 1
    else:
        tail = len(u) - w * blocks  # leftover rounds join the first block's left side: drop them
        b = u[tail:].reshape(blocks, w)
        peak = int(np.argmax(b[:, 0::2].mean(1)))
        height, end = b[peak, 1::2].mean(), b[-1].mean()
        peak_round = tail + peak * w + w // 2 + 1
    return {
        "final_true_utility": float(u[-1]),
        "final_block_true_utility": float(end),
        "peak_true_utility": float(height),
        "peak_round": int(peak_round),
        "collapse_drop": float(height - end),
        "auc_true_utility": float(u.mean()),
    }


def summarise(history: dict, col: int) -> dict[str, Any]:
    """The summary of one run's per-round ``history`` (column ``col``): the collapse metrics of
    the policy mean's ``true_utility``, else (SB3) ``sample_true_utility`` (``utility_of``)."""
    sampled = "true_utility" not in history
    prefix = "sample_" if sampled else ""
    out: dict[str, Any] = {"utility_of": "policy samples" if sampled else "policy mean"}
    out.update(summarise_history(history[f"{prefix}true_utility"][:, col]))
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


def failure(error: BaseException) -> tuple[str, str]:
    """``(status, reason)`` of a run ended by ``error``: ``"stopped"`` if diverged, else failed."""
    if isinstance(error, FloatingPointError):
        return "stopped", str(error)
    return "failed", f"{type(error).__name__}: {error}"


def write_run(
    job: Any,
    seed: int,
    batch: list[int],
    wall: float,
    batch_wall: float,
    result: dict | BaseException,
    col: int = 0,
    shared: list[str] | None = None,
) -> None:
    """Write and seal one run folder of ``job`` (a :class:`baselines.plan.Job`; the caller holds its
    lock): ``result`` is the history (its column ``col``) or the error that ended the run. The
    old seal goes first and ``manifest.json`` last, so a writer killed half-way is redone.
    """
    folder = run_dir(job.out, job.env_id, job.run_name, seed)
    (folder / MANIFEST).unlink(missing_ok=True)
    for tmp in folder.glob(".*.tmp"):  # left by a writer killed mid-write (we hold the lock)
        tmp.unlink(missing_ok=True)
    config = {
        **job.settings(seed),
        "config_hash": job.digest(seed),
        "batched_with": batch,
        **({"batched_with_agents": shared} if shared else {}),
        "versions": package_versions(),
        "git_commit": git_commit(),
        "code_hash": code_hash(),
    }
    atomic_write_json(folder / "config.json", config)
    summary: dict[str, Any] = {"status": "ok", "config_hash": config["config_hash"]}
    summary.update(env_id=job.env_id, agent=job.agent, run_name=job.run_name, seed=seed)
    summary.update(rounds=job.rounds, wall_time_s=wall, batch_wall_time_s=batch_wall)
    summary["reads"] = job.reads
    history = None if isinstance(result, BaseException) else result
    if history is not None:
        atomic_write_text(folder / "metrics.csv", metrics_csv(history, col))
        summary.update(summarise(history, col))
        (folder / "error.txt").unlink(missing_ok=True)
        files = ["config.json", "metrics.csv", "summary.json"]
    else:
        summary["status"], summary["reason"] = failure(result)
        atomic_write_text(folder / "error.txt", "".join(traceback.format_exception(result)))
        (folder / "metrics.csv").unlink(missing_ok=True)
        files = ["config.json", "error.txt", "summary.json"]
    atomic_write_json(folder / "summary.json", summary)
    write_manifest(folder, files)
    if history is not None and (job.tensorboard or job.wandb):
        from baselines.tracking import open_trackers

        name = f"{job.env_id}/{job.run_name}/seed_{seed}"
        with open_trackers(job.tensorboard, job.wandb, name, config) as tracker:
            tracker.log_history(history, column=col)
