"""Env families: a documented distribution over each blind-spot env's knobs, and fixed splits.

A single config is a fragile benchmark (the optimum's distance, the utility's width or the RM's
initial error decide whether naive RLHF collapses and whether a defence helps). A *family* is a
distribution over those knobs; two fixed, versioned lists are drawn from it:

* ``train``: for choosing hyperparameters (seeds 100-109);
* ``test``: for reporting only (seeds 0-9); never used for any choice.

Each config is addressable by name::

    gym.make("RLHFNeuralBlindSpot-v0", family="test/7")
    python -m baselines.run --env RLHFBlindSpot-v0 --env-kwargs family=train/3

(``"v1/test/7"`` names the version explicitly; another version is refused.) Explicit keyword
arguments may add settings the family config leaves alone; one that contradicts the family
config raises ``ValueError``.

How the lists were made (``python -m baselines.family_board check ENV``): candidates are drawn
in order from :data:`DISTRIBUTIONS` with the split's own generator
(``numpy.random.default_rng([SPLIT_SEEDS[split], ENV_INDEX[env]])``, values rounded to 3
significant digits), the oracle and naive run on each with the check seeds 200-209 (neither the
tuning nor the reporting seeds) for :data:`ROUNDS` rounds, and the first 16 *learnable*
candidates (the oracle's mean final true utility >= 90 % of the peak utility, 10) form the split.
:data:`CANDIDATE_INDEX` records which draws they are (a test recomputes them). Whether naive
collapses on each (mean collapse drop >= 0.5 with its 95 % CI above 0) is recorded in
``results/families/check_ENV.csv``; it was not a criterion. v1: linear, 27/28 train and 23/28
test candidates learnable, naive collapses in 14/16 train and 13/16 test configs; neural, 22/22
learnable in both splits, naive collapses in 11/16 train and 11/16 test configs.

Distributions (``U``: uniform, ``logU``: log-uniform, ``{}``: uniform choice); every other knob
keeps the env's default.

* ``RLHFBlindSpot-v0`` (linear RM, deterministic policy from ``y = 0``, 300 rounds):
  ``target_value ~ U[1.5, 3]`` (distance of the optimum from the start, which an anchor to the
  start pulls against), ``utility_width ~ logU[0.05, 0.4]``, ``signal_dims ~ {2, 3, 4}``,
  ``rm_init_noise ~ logU[0.05, 0.3]`` (the RM's initial blind spots), ``rm_lr ~ logU[0.0025,
  0.01]`` (how fast the RM follows the policy), ``label_noise ~ {0, 0.1, 0.3}``.
* ``RLHFNeuralBlindSpot-v0`` (MLP RM, Gaussian policy, 1000 rounds, the paper's schedules
  compressed to them): ``target_value ~ U[1.5, 3.5]``, ``utility_width ~ logU[0.1, 0.3]``,
  ``signal_dims ~ {1, 2, 3}``, ``rm_init_noise ~ logU[0.05, 0.2]``, ``samples_per_round ~
  {3, 5, 8}``, ``buffer_size ~ {25, 50, 100}``, ``label_noise ~ {0, 0.1, 0.3}``.

Version history: ``v1``, the first lists.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

VERSION = "v1"
SPLITS = ("train", "test")
SPLIT_SEEDS = {"train": 1001, "test": 2002}
ENV_INDEX = {"RLHFBlindSpot-v0": 0, "RLHFNeuralBlindSpot-v0": 1}
#: RM rounds per run on each family (the harness's --rounds for family runs)
ROUNDS = {"RLHFBlindSpot-v0": 300, "RLHFNeuralBlindSpot-v0": 1000}
#: configs per split
SIZE = 16
#: env class name -> env id (how an env's ``__init__`` finds its family)
ENV_CLASSES = {"BlindSpotEnv": "RLHFBlindSpot-v0", "NeuralBlindSpotEnv": "RLHFNeuralBlindSpot-v0"}


@dataclass(frozen=True)
class Knob:
    """One knob's distribution: ``"uniform"`` / ``"loguniform"`` on ``[low, high]`` or a
    uniform ``"choice"`` among ``choices``."""

    kind: str
    low: float = 0.0
    high: float = 0.0
    choices: tuple = ()

    def draw(self, rng: np.random.Generator) -> Any:
        if self.kind == "choice":
            return self.choices[int(rng.integers(len(self.choices)))]
        if self.kind == "uniform":
            return _round(float(rng.uniform(self.low, self.high)))
        if self.kind == "loguniform":
            return _round(float(math.exp(rng.uniform(math.log(self.low), math.log(self.high)))))
        raise ValueError(f"kind must be uniform, loguniform or choice, got {self.kind!r}")


def _round(x: float, digits: int = 3) -> float:
    return float(f"{x:.{digits}g}")


DISTRIBUTIONS: dict[str, dict[str, Knob]] = {
    "RLHFBlindSpot-v0": {
        "target_value": Knob("uniform", 1.5, 3.0),
        "utility_width": Knob("loguniform", 0.05, 0.4),
        "signal_dims": Knob("choice", choices=(2, 3, 4)),
        "rm_init_noise": Knob("loguniform", 0.05, 0.3),
        "rm_lr": Knob("loguniform", 0.0025, 0.01),
        "label_noise": Knob("choice", choices=(0.0, 0.1, 0.3)),
    },
    "RLHFNeuralBlindSpot-v0": {
        "target_value": Knob("uniform", 1.5, 3.5),
        "utility_width": Knob("loguniform", 0.1, 0.3),
        "signal_dims": Knob("choice", choices=(1, 2, 3)),
        "rm_init_noise": Knob("loguniform", 0.05, 0.2),
        "samples_per_round": Knob("choice", choices=(3, 5, 8)),
        "buffer_size": Knob("choice", choices=(25, 50, 100)),
        "label_noise": Knob("choice", choices=(0.0, 0.1, 0.3)),
    },
}


def candidates(env_id: str, split: str, n: int) -> list[dict[str, Any]]:
    """The first ``n`` draws of ``split``'s generator from ``env_id``'s distribution."""
    _check(env_id, split)
    rng = np.random.default_rng([SPLIT_SEEDS[split], ENV_INDEX[env_id]])
    dist = DISTRIBUTIONS[env_id]
    return [{k: knob.draw(rng) for k, knob in dist.items()} for _ in range(n)]


#: which candidate draws form each split (set by ``python -m baselines.family_board check``)
CANDIDATE_INDEX: dict[str, dict[str, tuple[int, ...]]] = {
    "RLHFBlindSpot-v0": {
        "train": (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
        "test": (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 13, 14, 15, 16, 17, 19),
    },
    "RLHFNeuralBlindSpot-v0": {
        "train": (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
        "test": (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
    },
}
#: the frozen lists (literal, so that the envs never depend on the generator's stream)
FAMILIES: dict[str, dict[str, tuple[dict[str, Any], ...]]] = {
    "RLHFBlindSpot-v0": {
        "train": (
            {
                "target_value": 2.42,
                "utility_width": 0.0517,
                "signal_dims": 3,
                "rm_init_noise": 0.233,
                "rm_lr": 0.00278,
                "label_noise": 0.0,
            },
            {
                "target_value": 1.8,
                "utility_width": 0.185,
                "signal_dims": 2,
                "rm_init_noise": 0.0657,
                "rm_lr": 0.00321,
                "label_noise": 0.0,
            },
            {
                "target_value": 1.7,
                "utility_width": 0.387,
                "signal_dims": 3,
                "rm_init_noise": 0.0787,
                "rm_lr": 0.00494,
                "label_noise": 0.3,
            },
            {
                "target_value": 1.82,
                "utility_width": 0.106,
                "signal_dims": 2,
                "rm_init_noise": 0.056,
                "rm_lr": 0.0033,
                "label_noise": 0.3,
            },
            {
                "target_value": 1.9,
                "utility_width": 0.365,
                "signal_dims": 4,
                "rm_init_noise": 0.0607,
                "rm_lr": 0.00858,
                "label_noise": 0.3,
            },
            {
                "target_value": 2.07,
                "utility_width": 0.0991,
                "signal_dims": 3,
                "rm_init_noise": 0.0971,
                "rm_lr": 0.0097,
                "label_noise": 0.0,
            },
            {
                "target_value": 2.08,
                "utility_width": 0.11,
                "signal_dims": 3,
                "rm_init_noise": 0.0542,
                "rm_lr": 0.00411,
                "label_noise": 0.1,
            },
            {
                "target_value": 1.69,
                "utility_width": 0.0599,
                "signal_dims": 2,
                "rm_init_noise": 0.102,
                "rm_lr": 0.00676,
                "label_noise": 0.0,
            },
            {
                "target_value": 1.81,
                "utility_width": 0.279,
                "signal_dims": 3,
                "rm_init_noise": 0.109,
                "rm_lr": 0.00508,
                "label_noise": 0.0,
            },
            {
                "target_value": 2.7,
                "utility_width": 0.113,
                "signal_dims": 4,
                "rm_init_noise": 0.173,
                "rm_lr": 0.00438,
                "label_noise": 0.3,
            },
            {
                "target_value": 2.44,
                "utility_width": 0.0616,
                "signal_dims": 3,
                "rm_init_noise": 0.0603,
                "rm_lr": 0.00311,
                "label_noise": 0.1,
            },
            {
                "target_value": 2.48,
                "utility_width": 0.204,
                "signal_dims": 3,
                "rm_init_noise": 0.287,
                "rm_lr": 0.00702,
                "label_noise": 0.1,
            },
            {
                "target_value": 1.54,
                "utility_width": 0.0632,
                "signal_dims": 2,
                "rm_init_noise": 0.131,
                "rm_lr": 0.00412,
                "label_noise": 0.0,
            },
            {
                "target_value": 2.33,
                "utility_width": 0.149,
                "signal_dims": 3,
                "rm_init_noise": 0.163,
                "rm_lr": 0.00779,
                "label_noise": 0.3,
            },
            {
                "target_value": 1.97,
                "utility_width": 0.16,
                "signal_dims": 4,
                "rm_init_noise": 0.183,
                "rm_lr": 0.00326,
                "label_noise": 0.3,
            },
            {
                "target_value": 2.27,
                "utility_width": 0.0651,
                "signal_dims": 3,
                "rm_init_noise": 0.164,
                "rm_lr": 0.0036,
                "label_noise": 0.1,
            },
        ),
        "test": (
            {
                "target_value": 1.73,
                "utility_width": 0.0983,
                "signal_dims": 3,
                "rm_init_noise": 0.249,
                "rm_lr": 0.00409,
                "label_noise": 0.0,
            },
            {
                "target_value": 2.9,
                "utility_width": 0.054,
                "signal_dims": 3,
                "rm_init_noise": 0.104,
                "rm_lr": 0.00789,
                "label_noise": 0.0,
            },
            {
                "target_value": 1.66,
                "utility_width": 0.129,
                "signal_dims": 3,
                "rm_init_noise": 0.0634,
                "rm_lr": 0.00284,
                "label_noise": 0.1,
            },
            {
                "target_value": 1.79,
                "utility_width": 0.285,
                "signal_dims": 2,
                "rm_init_noise": 0.0638,
                "rm_lr": 0.00873,
                "label_noise": 0.3,
            },
            {
                "target_value": 1.87,
                "utility_width": 0.245,
                "signal_dims": 2,
                "rm_init_noise": 0.14,
                "rm_lr": 0.00532,
                "label_noise": 0.1,
            },
            {
                "target_value": 2.52,
                "utility_width": 0.125,
                "signal_dims": 4,
                "rm_init_noise": 0.088,
                "rm_lr": 0.00728,
                "label_noise": 0.0,
            },
            {
                "target_value": 2.39,
                "utility_width": 0.0694,
                "signal_dims": 2,
                "rm_init_noise": 0.085,
                "rm_lr": 0.00443,
                "label_noise": 0.0,
            },
            {
                "target_value": 2.47,
                "utility_width": 0.0796,
                "signal_dims": 4,
                "rm_init_noise": 0.0783,
                "rm_lr": 0.00472,
                "label_noise": 0.3,
            },
            {
                "target_value": 1.77,
                "utility_width": 0.0729,
                "signal_dims": 4,
                "rm_init_noise": 0.0598,
                "rm_lr": 0.00353,
                "label_noise": 0.0,
            },
            {
                "target_value": 2.82,
                "utility_width": 0.238,
                "signal_dims": 2,
                "rm_init_noise": 0.0565,
                "rm_lr": 0.00548,
                "label_noise": 0.1,
            },
            {
                "target_value": 2.52,
                "utility_width": 0.127,
                "signal_dims": 2,
                "rm_init_noise": 0.131,
                "rm_lr": 0.00821,
                "label_noise": 0.3,
            },
            {
                "target_value": 2.18,
                "utility_width": 0.115,
                "signal_dims": 4,
                "rm_init_noise": 0.291,
                "rm_lr": 0.00294,
                "label_noise": 0.1,
            },
            {
                "target_value": 2.56,
                "utility_width": 0.153,
                "signal_dims": 2,
                "rm_init_noise": 0.123,
                "rm_lr": 0.00403,
                "label_noise": 0.0,
            },
            {
                "target_value": 1.83,
                "utility_width": 0.0853,
                "signal_dims": 4,
                "rm_init_noise": 0.0715,
                "rm_lr": 0.00285,
                "label_noise": 0.3,
            },
            {
                "target_value": 2.59,
                "utility_width": 0.162,
                "signal_dims": 3,
                "rm_init_noise": 0.126,
                "rm_lr": 0.00872,
                "label_noise": 0.1,
            },
            {
                "target_value": 1.5,
                "utility_width": 0.149,
                "signal_dims": 2,
                "rm_init_noise": 0.0739,
                "rm_lr": 0.00412,
                "label_noise": 0.0,
            },
        ),
    },
    "RLHFNeuralBlindSpot-v0": {
        "train": (
            {
                "target_value": 1.75,
                "utility_width": 0.16,
                "signal_dims": 2,
                "rm_init_noise": 0.0585,
                "samples_per_round": 3,
                "buffer_size": 50,
                "label_noise": 0.3,
            },
            {
                "target_value": 1.64,
                "utility_width": 0.23,
                "signal_dims": 3,
                "rm_init_noise": 0.0897,
                "samples_per_round": 3,
                "buffer_size": 50,
                "label_noise": 0.0,
            },
            {
                "target_value": 1.73,
                "utility_width": 0.142,
                "signal_dims": 2,
                "rm_init_noise": 0.147,
                "samples_per_round": 5,
                "buffer_size": 50,
                "label_noise": 0.1,
            },
            {
                "target_value": 2.85,
                "utility_width": 0.136,
                "signal_dims": 2,
                "rm_init_noise": 0.0991,
                "samples_per_round": 3,
                "buffer_size": 50,
                "label_noise": 0.1,
            },
            {
                "target_value": 3.02,
                "utility_width": 0.15,
                "signal_dims": 1,
                "rm_init_noise": 0.0705,
                "samples_per_round": 3,
                "buffer_size": 25,
                "label_noise": 0.1,
            },
            {
                "target_value": 3.28,
                "utility_width": 0.214,
                "signal_dims": 3,
                "rm_init_noise": 0.127,
                "samples_per_round": 5,
                "buffer_size": 50,
                "label_noise": 0.0,
            },
            {
                "target_value": 2.58,
                "utility_width": 0.177,
                "signal_dims": 1,
                "rm_init_noise": 0.0634,
                "samples_per_round": 3,
                "buffer_size": 50,
                "label_noise": 0.0,
            },
            {
                "target_value": 2.2,
                "utility_width": 0.243,
                "signal_dims": 2,
                "rm_init_noise": 0.19,
                "samples_per_round": 3,
                "buffer_size": 50,
                "label_noise": 0.1,
            },
            {
                "target_value": 3.25,
                "utility_width": 0.172,
                "signal_dims": 2,
                "rm_init_noise": 0.0833,
                "samples_per_round": 8,
                "buffer_size": 100,
                "label_noise": 0.1,
            },
            {
                "target_value": 2.17,
                "utility_width": 0.246,
                "signal_dims": 2,
                "rm_init_noise": 0.124,
                "samples_per_round": 3,
                "buffer_size": 100,
                "label_noise": 0.1,
            },
            {
                "target_value": 2.74,
                "utility_width": 0.154,
                "signal_dims": 3,
                "rm_init_noise": 0.127,
                "samples_per_round": 3,
                "buffer_size": 50,
                "label_noise": 0.1,
            },
            {
                "target_value": 2.21,
                "utility_width": 0.225,
                "signal_dims": 3,
                "rm_init_noise": 0.0796,
                "samples_per_round": 3,
                "buffer_size": 100,
                "label_noise": 0.3,
            },
            {
                "target_value": 2.26,
                "utility_width": 0.171,
                "signal_dims": 1,
                "rm_init_noise": 0.0757,
                "samples_per_round": 5,
                "buffer_size": 50,
                "label_noise": 0.3,
            },
            {
                "target_value": 2.52,
                "utility_width": 0.109,
                "signal_dims": 2,
                "rm_init_noise": 0.0888,
                "samples_per_round": 8,
                "buffer_size": 50,
                "label_noise": 0.3,
            },
            {
                "target_value": 3.4,
                "utility_width": 0.184,
                "signal_dims": 2,
                "rm_init_noise": 0.0724,
                "samples_per_round": 8,
                "buffer_size": 50,
                "label_noise": 0.1,
            },
            {
                "target_value": 2.64,
                "utility_width": 0.134,
                "signal_dims": 2,
                "rm_init_noise": 0.098,
                "samples_per_round": 3,
                "buffer_size": 100,
                "label_noise": 0.0,
            },
        ),
        "test": (
            {
                "target_value": 2.83,
                "utility_width": 0.101,
                "signal_dims": 3,
                "rm_init_noise": 0.0951,
                "samples_per_round": 3,
                "buffer_size": 100,
                "label_noise": 0.1,
            },
            {
                "target_value": 3.11,
                "utility_width": 0.258,
                "signal_dims": 3,
                "rm_init_noise": 0.157,
                "samples_per_round": 3,
                "buffer_size": 25,
                "label_noise": 0.3,
            },
            {
                "target_value": 1.87,
                "utility_width": 0.14,
                "signal_dims": 3,
                "rm_init_noise": 0.158,
                "samples_per_round": 5,
                "buffer_size": 50,
                "label_noise": 0.3,
            },
            {
                "target_value": 1.96,
                "utility_width": 0.256,
                "signal_dims": 2,
                "rm_init_noise": 0.154,
                "samples_per_round": 5,
                "buffer_size": 100,
                "label_noise": 0.1,
            },
            {
                "target_value": 1.88,
                "utility_width": 0.137,
                "signal_dims": 1,
                "rm_init_noise": 0.178,
                "samples_per_round": 8,
                "buffer_size": 50,
                "label_noise": 0.0,
            },
            {
                "target_value": 2.38,
                "utility_width": 0.13,
                "signal_dims": 1,
                "rm_init_noise": 0.194,
                "samples_per_round": 8,
                "buffer_size": 25,
                "label_noise": 0.0,
            },
            {
                "target_value": 3.1,
                "utility_width": 0.231,
                "signal_dims": 1,
                "rm_init_noise": 0.137,
                "samples_per_round": 5,
                "buffer_size": 100,
                "label_noise": 0.3,
            },
            {
                "target_value": 3.02,
                "utility_width": 0.204,
                "signal_dims": 2,
                "rm_init_noise": 0.0519,
                "samples_per_round": 3,
                "buffer_size": 100,
                "label_noise": 0.3,
            },
            {
                "target_value": 2.86,
                "utility_width": 0.198,
                "signal_dims": 1,
                "rm_init_noise": 0.0668,
                "samples_per_round": 5,
                "buffer_size": 100,
                "label_noise": 0.0,
            },
            {
                "target_value": 3.2,
                "utility_width": 0.242,
                "signal_dims": 2,
                "rm_init_noise": 0.0813,
                "samples_per_round": 3,
                "buffer_size": 25,
                "label_noise": 0.3,
            },
            {
                "target_value": 1.99,
                "utility_width": 0.158,
                "signal_dims": 3,
                "rm_init_noise": 0.0649,
                "samples_per_round": 5,
                "buffer_size": 50,
                "label_noise": 0.0,
            },
            {
                "target_value": 3.44,
                "utility_width": 0.124,
                "signal_dims": 3,
                "rm_init_noise": 0.112,
                "samples_per_round": 8,
                "buffer_size": 50,
                "label_noise": 0.1,
            },
            {
                "target_value": 2.62,
                "utility_width": 0.213,
                "signal_dims": 2,
                "rm_init_noise": 0.124,
                "samples_per_round": 5,
                "buffer_size": 100,
                "label_noise": 0.0,
            },
            {
                "target_value": 2.48,
                "utility_width": 0.22,
                "signal_dims": 2,
                "rm_init_noise": 0.0901,
                "samples_per_round": 3,
                "buffer_size": 100,
                "label_noise": 0.3,
            },
            {
                "target_value": 1.98,
                "utility_width": 0.231,
                "signal_dims": 3,
                "rm_init_noise": 0.112,
                "samples_per_round": 3,
                "buffer_size": 50,
                "label_noise": 0.0,
            },
            {
                "target_value": 1.91,
                "utility_width": 0.18,
                "signal_dims": 3,
                "rm_init_noise": 0.0774,
                "samples_per_round": 5,
                "buffer_size": 100,
                "label_noise": 0.0,
            },
        ),
    },
}


def _check(env_id: str, split: str) -> None:
    if env_id not in DISTRIBUTIONS:
        raise ValueError(f"env {env_id!r} has no family; families: {', '.join(DISTRIBUTIONS)}")
    if split not in SPLITS:
        raise ValueError(f"family split must be one of {SPLITS}, got {split!r}")


def configs(env_id: str, split: str) -> list[dict[str, Any]]:
    """The env kwargs of every config of a split, in order (index = position)."""
    _check(env_id, split)
    return [dict(c) for c in FAMILIES[env_id][split]]


def names(env_id: str, split: str) -> list[str]:
    """``["split/0", "split/1", ...]`` of a split."""
    return [f"{split}/{i}" for i in range(len(configs(env_id, split)))]


def config(env_id: str, name: str) -> dict[str, Any]:
    """The env kwargs of the family config ``name`` (``"test/7"`` or ``"v1/test/7"``).

    Raises:
        ValueError: one line naming ``family`` (bad form, other version, unknown split, index
            out of range, env without a family).
    """
    m = re.fullmatch(r"(?:(v\d+)/)?(\w+)/(\d+)", str(name)) if isinstance(name, str) else None
    if not m:
        raise ValueError(f"family must look like 'test/7' or '{VERSION}/train/3', got {name!r}")
    version, split, index = m[1], m[2], int(m[3])
    if version is not None and version != VERSION:
        raise ValueError(f"family {name!r}: version {version} is not this release's ({VERSION})")
    if env_id not in DISTRIBUTIONS:
        raise ValueError(f"family: env {env_id!r} has none; families: {', '.join(DISTRIBUTIONS)}")
    if split not in SPLITS:
        raise ValueError(f"family {name!r}: split must be one of {SPLITS}, got {split!r}")
    items = FAMILIES[env_id][split]
    if not 0 <= index < len(items):
        raise ValueError(
            f"family {name!r}: index must be in [0, {len(items) - 1}] for {env_id} {split}"
        )
    return dict(items[index])


def expand(env: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` with ``family=NAME`` replaced by that config's settings.

    ``env`` is an env id or an env class name (:data:`ENV_CLASSES`). Explicit kwargs that the
    family config does not set are kept; one that contradicts it raises ``ValueError``.
    """
    if "family" not in kwargs:
        return kwargs
    kwargs = dict(kwargs)
    name = kwargs.pop("family")
    env_id = ENV_CLASSES.get(env, env)
    fam = config(env_id, name)
    clash = sorted(k for k in kwargs if k in fam and kwargs[k] != fam[k])
    if clash:
        k = clash[0]
        raise ValueError(
            f"family {name!r} sets {k}={fam[k]!r}; the explicit {k}={kwargs[k]!r} contradicts it"
        )
    return {**fam, **kwargs}
