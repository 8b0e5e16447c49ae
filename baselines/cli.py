"""The commands' shared flags, as argparse parent parsers; output folder checks."""

from __future__ import annotations

import argparse
import secrets
import sys
from pathlib import Path

from baselines.plan import MAX_ROUNDS, MAX_RUNS, CLIError

ROOT = Path(__file__).resolve().parent.parent


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage dump
        raise CLIError(message)

    def fail(self, error: Exception | str, status: int = 2) -> int:
        """Print ``error`` as the command's one-line error; returns ``status``."""
        print(f"{self.prog}: error: {error}", file=sys.stderr)
        return status


def command(module: str, doc: str, *parents: argparse.ArgumentParser) -> Parser:
    """The parser of ``python -m MODULE``, described by the first line of its docstring."""
    return Parser(prog=f"python -m {module}", description=doc.split("\n")[0], parents=parents)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value}")
    return value


def _parent() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(add_help=False)


#: where runs are computed: worker processes, or a Ray cluster
WORKERS = _parent()
WORKERS.add_argument("--jobs", type=positive_int, default=2, help="parallel workers (default 2)")
WORKERS.add_argument(
    "--backend", default="local", choices=("local", "ray"), help="local (process pool) or ray"
)
WORKERS.add_argument("--address", default=None, help="Ray cluster address (default: local Ray)")


def check_workers(args) -> None:
    """The :data:`WORKERS` flags agree with each other."""
    if args.address and args.backend != "ray":
        raise CLIError("--address needs --backend ray")


def execute_on(jobs: list, args, progress: bool = False) -> list[dict]:
    """Run ``jobs`` on the backend the :data:`WORKERS` flags chose, the agents of one env config
    in one program unless ``--no-batch-agents``; their outcomes."""
    from baselines.execute import execute, execute_ray

    if args.backend == "ray":
        return execute_ray(jobs, args.address, args.jobs, args.batch_agents) if jobs else []
    return execute(jobs, args.jobs, progress, args.batch_agents)


#: commands that run and resume run folders
RERUN = _parent()
RERUN.add_argument("--force", action="store_true", help="redo finished runs")
RERUN.add_argument("--no-progress", action="store_true", help="hide the progress bar")

#: commands that write tables or figures, which go into the committed results/ only when asked
PUBLISH = _parent()
PUBLISH.add_argument("--force", action="store_true", help="allow writing into results/")

ROUNDS = _parent()
ROUNDS.add_argument(
    "--rounds", type=positive_int, default=None, help="RM rounds (default: the env's YAML)"
)


def add_results(p: argparse.ArgumentParser, default: str, what: str) -> None:
    """``--results``: where ``what`` goes (committed ``results/`` only with ``--force``)."""
    p.add_argument(
        "--results",
        default=default,
        help=f"where {what} go (default {default}, untracked; committed results/ needs --force)",
    )


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
        type=positive_int,
        default=MAX_RUNS,
        help=f"refuse commands of more run folders than this (default {MAX_RUNS})",
    )
    p.add_argument(
        "--max-rounds",
        type=positive_int,
        default=MAX_ROUNDS,
        help=f"refuse runs of more RM rounds than this (default {MAX_ROUNDS:,})",
    )


def refuse_committed(path: str | Path, flag: str, force: bool) -> None:
    """Refuse ``path`` in this checkout's committed ``results/`` folder unless ``force``:
    published tables and figures change only when asked."""
    committed = (ROOT / "results").resolve()
    where = Path(path).resolve()
    if not force and (where == committed or committed in where.parents):
        raise CLIError(
            f"{flag} {path} is in the committed results folder; pass --force to write there"
        )


def check_writable(out: str | Path, flag: str = "--out") -> None:
    """Refuse ``out`` unless it is, or can be made, a writable folder."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CLIError(f"{flag}: {out} exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-probe.{secrets.token_hex(4)}.tmp"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise CLIError(f"{flag}: cannot write into {out} ({e.strerror or e})") from None
