"""Per-round metrics into TensorBoard and Weights & Biases (optional backends, never required).

``--tensorboard DIR`` / ``--wandb PROJECT`` send the columns of ``metrics.csv`` to the tools SB3
users already read too. TensorBoard needs the ``tensorboard`` package, W&B needs ``wandb``
(``WANDB_MODE=offline`` works without an account); a backend that is missing or cannot start is
a :class:`TrackerError`, one line naming the flag. ::

    from baselines.tracking import open_trackers

    with open_trackers(tensorboard_dir="tb", wandb_project=None,
                       run_name="RLHFBlindSpot-v0/naive/seed_0", config=settings) as tracker:
        tracker.log(step, {"true_utility": 4.2, "proxy_reward": 5.0})   # one round
        tracker.log_history(history, column=i)   # or a whole (rounds, S) history, seed i

For a batched white-box job, open one tracker per seed.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

#: flag -> (the module it imports, how to install it)
BACKENDS = {
    "--tensorboard": ("torch.utils.tensorboard", "pip install 'rlhf-blindspot-gym[tensorboard]'"),
    "--wandb": ("wandb", "pip install wandb"),
}


class TrackerError(Exception):
    """A requested logging backend is missing or cannot start (a one-line message)."""


class Tracker(contextlib.AbstractContextManager):
    """Sends per-round scalars to the opened backends (TensorBoard writer, W&B run)."""

    def __init__(self, writer: Any = None, wandb_run: Any = None):
        self.writer = writer
        self.wandb_run = wandb_run

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

    def log_history(self, history: Mapping[str, Any], column: int = 0) -> None:
        """Log every round of ``history`` (arrays of shape (rounds,) or (rounds, S)), from step 1."""
        arrays = {k: np.asarray(v) for k, v in history.items()}
        arrays = {k: (v[:, column] if v.ndim == 2 else v) for k, v in arrays.items() if v.ndim}
        rounds = max((len(v) for v in arrays.values()), default=0)
        for t in range(rounds):
            self.log(t + 1, {k: v[t] for k, v in arrays.items() if t < len(v)})

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
            self.writer = None
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _jsonable(config: Mapping[str, Any] | None) -> dict[str, Any]:
    return json.loads(json.dumps(dict(config or {}), default=str))


def backend(flag: str):
    """The backend module of ``flag`` (:data:`BACKENDS`), or :class:`TrackerError` if missing."""
    module, hint = BACKENDS[flag]
    try:
        return importlib.import_module(module)
    except ImportError:
        raise TrackerError(f"{flag} needs the {flag[2:]} package: {hint}") from None


def open_trackers(
    tensorboard_dir: str | Path | None = None,
    wandb_project: str | None = None,
    run_name: str = "run",
    config: Mapping[str, Any] | None = None,
) -> Tracker:
    """Open the backends asked for (neither: a tracker that does nothing). TensorBoard events go
    to ``tensorboard_dir / run_name`` (``config`` as a JSON text summary); W&B gets one run named
    ``run_name`` in ``wandb_project`` with ``config`` (its mode and folder: ``WANDB_MODE``,
    ``WANDB_DIR``)."""
    if not isinstance(run_name, str) or not run_name:
        raise ValueError(f"run_name must be a non-empty string, got {run_name!r}")
    tb = backend("--tensorboard") if tensorboard_dir is not None else None
    wandb = backend("--wandb") if wandb_project is not None else None
    writer = run = None
    if tb is not None:
        try:
            writer = tb.SummaryWriter(log_dir=str(Path(tensorboard_dir) / run_name))
        except OSError as e:
            raise TrackerError(f"--tensorboard: cannot write to {tensorboard_dir}: {e}") from None
        writer.add_text("config", "```\n" + json.dumps(_jsonable(config), indent=2) + "\n```")
    if wandb is not None:
        try:
            run = wandb.init(project=wandb_project, name=run_name, config=_jsonable(config))
        except Exception as e:  # W&B raises its own errors (no login, bad project, ...)
            if writer is not None:
                writer.close()
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise TrackerError(f"--wandb: cannot start a run: {first}") from None
    return Tracker(writer, run)
