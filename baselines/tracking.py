"""Per-round metrics into TensorBoard and Weights & Biases (optional backends, never required).

The harness's runs write ``metrics.csv`` whatever happens; this module sends the same columns
(true utility, proxy reward, gap, RM error, label and oracle counters, agent diagnostics: the
white-box loop's ``history`` / the CSV's columns) to the logging tools SB3 and imitation users
already read. TensorBoard needs the ``tensorboard`` package (``pip install
'rlhf-blindspot-gym[tensorboard]'``; written through ``torch.utils.tensorboard.SummaryWriter``);
W&B needs ``wandb`` (``WANDB_MODE=offline`` or ``wandb_mode="offline"`` works without an
account). Asking for a backend that is not installed raises :class:`TrackerError`, a one-line
message that names the flag (``--tensorboard`` / ``--wandb``).

API::

    from baselines.tracking import open_trackers

    with open_trackers(tensorboard_dir="tb", wandb_project=None,
                       run_name="RLHFBlindSpot-v0/naive/seed_0", config=settings) as tracker:
        tracker.log(step, {"true_utility": 4.2, "proxy_reward": 5.0})   # one round
        tracker.log_history(history, column=i)   # or a whole (rounds, S) history, seed i

* :func:`open_trackers` ``(tensorboard_dir, wandb_project, run_name, config, wandb_mode=None,
  wandb_dir=None) -> Tracker``: with neither backend asked for, a tracker that does nothing.
  TensorBoard events go to ``tensorboard_dir / run_name`` (one subfolder per run, as
  TensorBoard's run selector expects; ``config`` is written as a JSON text summary). W&B gets
  one run named ``run_name`` in ``wandb_project`` with ``config``.
* :meth:`Tracker.log` ``(step, metrics)``: scalars at ``step`` (the RM round, from 1); values
  that are not finite numbers are skipped.
* :meth:`Tracker.log_history` ``(history, column=0, start=1)``: every round of a per-round
  history (``{column: array of shape (rounds,) or (rounds, S)}``), column ``column`` of 2-D
  arrays, rounds numbered from ``start``.
* :meth:`Tracker.close`: flush and close (also on leaving a ``with`` block).

For a batched white-box job, open one tracker per seed (``run_name`` ending in ``seed_S``) and
feed it from the round callback, ``tracker.log(t, {k: v[i] for k, v in row.items()})``, or once
from the returned history with :meth:`Tracker.log_history`. SB3 runs can pass
``tensorboard_log`` to the algorithm instead (SB3's own writer) and log the harness's columns
here as well.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

TENSORBOARD_HINT = "pip install tensorboard (or the package's [tensorboard] extra)"
WANDB_HINT = "pip install wandb"


class TrackerError(Exception):
    """A requested logging backend is missing or cannot start (a one-line message)."""


class Tracker:
    """Sends per-round scalars to the opened backends (TensorBoard writer, W&B run)."""

    def __init__(self, writer: Any = None, wandb_run: Any = None):
        self.writer = writer
        self.wandb_run = wandb_run

    @property
    def active(self) -> bool:
        """Whether any backend is open."""
        return self.writer is not None or self.wandb_run is not None

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Log scalar ``metrics`` at ``step``; non-numbers and non-finite values are skipped."""
        values = {}
        for key, v in metrics.items():
            try:
                x = float(np.asarray(v).reshape(()))
            except (TypeError, ValueError):
                continue
            if math.isfinite(x):
                values[str(key)] = x
        if self.writer is not None:
            for key, x in values.items():
                self.writer.add_scalar(key, x, global_step=int(step))
        if self.wandb_run is not None and values:
            self.wandb_run.log(values, step=int(step))

    def log_history(self, history: Mapping[str, Any], column: int = 0, start: int = 1) -> None:
        """Log every round of ``history`` (arrays of shape (rounds,) or (rounds, S))."""
        arrays = {k: np.asarray(v) for k, v in history.items()}
        arrays = {k: (v[:, column] if v.ndim == 2 else v) for k, v in arrays.items() if v.ndim}
        rounds = max((len(v) for v in arrays.values()), default=0)
        for t in range(rounds):
            self.log(start + t, {k: v[t] for k, v in arrays.items() if t < len(v)})

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
            self.writer = None
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _jsonable(config: Mapping[str, Any] | None) -> dict[str, Any]:
    return json.loads(json.dumps(dict(config or {}), default=str))


def open_trackers(
    tensorboard_dir: str | Path | None = None,
    wandb_project: str | None = None,
    run_name: str = "run",
    config: Mapping[str, Any] | None = None,
    wandb_mode: str | None = None,
    wandb_dir: str | Path | None = None,
) -> Tracker:
    """Open the backends asked for (see the module docstring); :class:`TrackerError` if one is
    not installed or cannot start. ``wandb_mode``: ``"online"``, ``"offline"`` or ``"disabled"``
    (``None``: W&B's default, e.g. the ``WANDB_MODE`` variable)."""
    if not isinstance(run_name, str) or not run_name:
        raise ValueError(f"run_name must be a non-empty string, got {run_name!r}")
    writer = run = None
    if tensorboard_dir is not None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            msg = f"--tensorboard needs the tensorboard package: {TENSORBOARD_HINT}"
            raise TrackerError(msg) from None
        try:
            writer = SummaryWriter(log_dir=str(Path(tensorboard_dir) / run_name))
        except OSError as e:
            raise TrackerError(f"--tensorboard: cannot write to {tensorboard_dir}: {e}") from None
        writer.add_text("config", "```\n" + json.dumps(_jsonable(config), indent=2) + "\n```")
    if wandb_project is not None:
        try:
            import wandb
        except ImportError:
            if writer is not None:
                writer.close()
            raise TrackerError(f"--wandb needs the wandb package: {WANDB_HINT}") from None
        kwargs: dict[str, Any] = {
            "project": wandb_project,
            "name": run_name,
            "config": _jsonable(config),
        }
        if wandb_mode is not None:
            kwargs["mode"] = wandb_mode
        if wandb_dir is not None:
            kwargs["dir"] = str(wandb_dir)
        try:
            run = wandb.init(**kwargs)
        except Exception as e:  # W&B raises its own errors (no login, bad project, ...)
            if writer is not None:
                writer.close()
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise TrackerError(f"--wandb: cannot start a run: {first}") from None
    return Tracker(writer, run)
