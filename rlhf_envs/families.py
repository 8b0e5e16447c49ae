"""Env families: a documented distribution over each blind-spot env's knobs, and fixed splits.

A single config is a fragile benchmark (the optimum's distance, the utility's width or the RM's
initial error decide whether naive RLHF collapses and whether a defence helps). A *family* is a
distribution over those knobs; two fixed, versioned lists are drawn from it:

* ``train``: for choosing hyperparameters (seeds 100-109);
* ``test``: for reporting only (seeds 0-9); never used for any choice.

Each config is addressable by name::

    gym.make("RLHFNeuralBlindSpot-v0", family="test/7")
    python -m baselines.run --env RLHFBlindSpot-v0 --env-kwargs family=train/3

(``"v1/test/7"`` names the version, the default; ``"v2/test/7"`` addresses v2; another is
refused.) Explicit keyword arguments may add
settings the family config leaves alone; one that contradicts it raises ``ValueError``.

How the lists were made (``python -m baselines.family_board check ENV``, see there): candidates
drawn in order from :data:`DISTRIBUTIONS` (every other knob: the env's default) with the split's
own generator (``numpy.random.default_rng([SPLIT_SEEDS[split], ENV_INDEX[env]])``, 3 significant
digits); the first 16 *learnable* ones form the split, frozen in
``rlhf_envs/data/families_v1.json`` (:data:`FAMILIES`; :data:`CANDIDATE_INDEX` says which draws,
a test recomputes them). Whether naive collapses (``results/families/check_ENV.csv``) was not a
criterion. v1: linear, 27/28 train and 23/28 test candidates learnable, naive collapses in 14/16
train and 13/16 test configs; neural, 22/22 learnable in both splits, naive collapses in 11/16
train and 11/16 test configs.

Version history: ``v1``, the first lists; ``v2``, the biased labeler (:data:`V2_KNOBS`), drawn
the same way (generator ``[SPLIT_SEEDS[split], ENV_INDEX[env], 2]``), frozen in
``families_v2.json``; its splits are named ``v2/train`` and ``v2/test``. v2 learnable: linear 26/28
train, 23/28 test (naive collapses in 14/16, 15/16); neural 22/22 in both (10/16, 9/16).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np

VERSION = "v1"  # the default
VERSIONS = ("v1", "v2")
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
    uniform ``"choice"`` among ``choices``; ``"signed"``: a loguniform draw with a random sign."""

    kind: str
    low: float = 0.0
    high: float = 0.0
    choices: tuple = ()

    def draw(self, rng: np.random.Generator) -> Any:
        if self.kind == "choice":
            return self.choices[int(rng.integers(len(self.choices)))]
        if self.kind == "uniform":
            return _round(float(rng.uniform(self.low, self.high)))
        if self.kind == "signed":  # a random sign times a loguniform draw on [low, high]
            sign = (-1.0, 1.0)[int(rng.integers(2))]
            return sign * Knob("loguniform", self.low, self.high).draw(rng)
        if self.kind == "loguniform":
            return _round(float(math.exp(rng.uniform(math.log(self.low), math.log(self.high)))))
        raise ValueError(f"kind must be uniform, loguniform, signed or choice, got {self.kind!r}")


def _round(x: float, digits: int = 3) -> float:
    return float(f"{x:.{digits}g}")


DISTRIBUTIONS: dict[str, dict[str, Knob]] = {
    # linear RM, deterministic policy from y = 0
    "RLHFBlindSpot-v0": {
        # distance of the optimum from the start, which an anchor to the start pulls against
        "target_value": Knob("uniform", 1.5, 3.0),
        "utility_width": Knob("loguniform", 0.05, 0.4),
        "signal_dims": Knob("choice", choices=(2, 3, 4)),
        "rm_init_noise": Knob("loguniform", 0.05, 0.3),  # the RM's initial blind spots
        "rm_lr": Knob("loguniform", 0.0025, 0.01),  # how fast the RM follows the policy
        "label_noise": Knob("choice", choices=(0.0, 0.1, 0.3)),
    },
    # MLP RM, Gaussian policy, the paper's schedules compressed to ROUNDS
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


#: v2, the biased labeler (written before any v2 draw): the labeler adds ``labeler_bias *
#: sum(y[labeler_bias_dims])`` to the truth, with strength 1-6 (the verbosity env's is 6) of
#: either sign, on the first signal dim (it over- or undershoots the optimum), the last noise dim
#: or the last three; preference feedback (soft, so ``label_noise`` does not act) in 1/3 of draws
V2_KNOBS = {
    env: {
        "labeler_bias": Knob("signed", 1.0, 6.0),
        "labeler_bias_dims": Knob("choice", choices=([0], [d - 1], [d - 3, d - 2, d - 1])),
        "feedback": Knob("choice", choices=("rating", "rating", "preference")),
    }
    for env, d in (("RLHFBlindSpot-v0", 50), ("RLHFNeuralBlindSpot-v0", 10))  # the envs' dims
}
#: each version's distribution per env
VERSION_DISTRIBUTIONS = {
    "v1": DISTRIBUTIONS,
    "v2": {env: {**knobs, **V2_KNOBS[env]} for env, knobs in DISTRIBUTIONS.items()},
}


def candidates(env_id: str, split: str, n: int) -> list[dict[str, Any]]:
    """The first ``n`` draws of ``split``'s generator (``"v2/train"``: v2's) from its knobs."""
    version, split = _check(env_id, split)
    extra = [] if version == "v1" else [int(version[1:])]  # v1's generator as it was
    rng = np.random.default_rng([SPLIT_SEEDS[split], ENV_INDEX[env_id], *extra])
    dist = VERSION_DISTRIBUTIONS[version][env_id]
    return [{k: knob.draw(rng) for k, knob in dist.items()} for _ in range(n)]


def _frozen(version: str) -> dict[str, dict[str, dict[str, tuple]]]:
    text = (resources.files("rlhf_envs") / "data" / f"families_{version}.json").read_text("utf-8")
    return {
        key: {env: {s: tuple(v[key]) for s, v in splits.items()} for env, splits in data.items()}
        for data in [json.loads(text)]
        for key in ("candidates", "configs")
    }


# the frozen lists of each version: data/families_VERSION.json in the package
_FROZEN = {v: _frozen(v) for v in VERSIONS}
#: which candidate draws form each split (set by ``python -m baselines.family_board check``)
CANDIDATE_INDEX: dict[str, dict[str, tuple[int, ...]]] = _FROZEN[VERSION]["candidates"]
#: the frozen lists (data, so that the envs never depend on the generator's stream)
FAMILIES: dict[str, dict[str, tuple[dict[str, Any], ...]]] = _FROZEN[VERSION]["configs"]


def _check(env_id: str, split: str) -> tuple[str, str]:
    """``split``'s (version, name) (``"test"``: the default version's), or raise."""
    version, _, name = split.rpartition("/")
    version = version or VERSION
    if env_id not in DISTRIBUTIONS:
        raise ValueError(f"env {env_id!r} has no family; families: {', '.join(DISTRIBUTIONS)}")
    if version not in VERSIONS:
        raise ValueError(f"family version must be one of {VERSIONS}, got {version!r}")
    if name not in (*SPLITS, HIDDEN):
        raise ValueError(f"family split must be one of {(*SPLITS, HIDDEN)}, got {name!r}")
    return version, name


def configs(env_id: str, split: str) -> list[dict[str, Any]]:
    """The env kwargs of every config of a split (``"v2/test"``: v2's), in order."""
    version, name = _check(env_id, split)
    if name == HIDDEN:
        return hidden_configs(env_id, version)
    return [dict(c) for c in _FROZEN[version]["configs"][env_id][name]]


# -- the hidden split ---------------------------------------------------------------------------
#: a split drawn from the distribution with a secret that only the judge's process holds
#: (``baselines.judge`` takes it from the environment variable :data:`SECRET_VARIABLE` and
#: removes it there before any agent's process starts); its configs are named ``hidden/I``
HIDDEN = "hidden"
SECRET_VARIABLE = "RLHF_JUDGE_SECRET"
_secret: bytes | None = None


def set_secret(secret: str | bytes | None) -> None:
    """Hold the hidden split's secret in this process (the judge's; ``None`` forgets it)."""
    global _secret
    _secret = secret.encode() if isinstance(secret, str) else secret


def secret() -> bytes | None:
    return _secret


def commitment() -> str:
    """A hash of the secret, kept in the record of every hidden run (the secret's reveal after
    the board proves which configs were drawn)."""
    return hashlib.sha256(b"rlhf-hidden-split:" + _need_secret()).hexdigest()


def hidden_configs(env_id: str, version: str = VERSION) -> list[dict[str, Any]]:
    """:data:`SIZE` draws of ``env_id``'s distribution with the secret's own generator (not
    filtered for learnability, unlike the frozen splits)."""
    _check(env_id, f"{version}/train")
    tail = b"" if version == "v1" else f"/{version}".encode()  # v1's draws as they were
    digest = hashlib.sha256(_need_secret() + b"/" + env_id.encode() + tail).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:16], "little"))
    dist = VERSION_DISTRIBUTIONS[version][env_id]
    return [{k: knob.draw(rng) for k, knob in dist.items()} for _ in range(SIZE)]


def _need_secret() -> bytes:
    if _secret is None:
        raise ValueError(
            f"family split {HIDDEN!r} needs the judge's secret: set {SECRET_VARIABLE} for the "
            "harness command (baselines.run, sweep or family_board)"
        )
    return _secret


def config(env_id: str, name: str) -> dict[str, Any]:
    """The env kwargs of the family config ``name`` (``"test/7"``, ``"v1/test/7"``, ``"v2/test/7"``)

    Raises:
        ValueError: one line naming ``family`` (bad form, other version, unknown split, index
            out of range, env without a family).
    """
    m = re.fullmatch(r"(?:(v\d+)/)?(\w+)/(\d+)", str(name)) if isinstance(name, str) else None
    if not m:
        raise ValueError(f"family must look like 'test/7' or '{VERSION}/train/3', got {name!r}")
    version, split, index = m[1] or VERSION, m[2], int(m[3])
    items = configs(env_id, f"{version}/{split}")
    if not 0 <= index < len(items):
        raise ValueError(
            f"family {name!r}: index must be in [0, {len(items) - 1}] for {env_id} {split}"
        )
    return dict(items[index])


def expand(env: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` with ``family=NAME`` replaced by that config's settings.

    ``env`` is an env id or an env class name (:data:`ENV_CLASSES`). Explicit kwargs that the
    family config does not set are kept; one that contradicts it raises ``ValueError``. A hidden
    config's ``hidden_commitment`` (what its record keeps) must match this process's secret.
    """
    if "family" not in kwargs:
        return kwargs
    kwargs = dict(kwargs)
    name = kwargs.pop("family")
    env_id = ENV_CLASSES.get(env, env)
    fam = config(env_id, name)
    promised = kwargs.pop("hidden_commitment", None)
    if promised is not None and promised != commitment():
        raise ValueError(f"family {name!r}: hidden_commitment does not match this secret's")
    clash = sorted(k for k in kwargs if k in fam and kwargs[k] != fam[k])
    if clash:
        k = clash[0]
        raise ValueError(
            f"family {name!r} sets {k}={fam[k]!r}; the explicit {k}={kwargs[k]!r} contradicts it"
        )
    return {**fam, **kwargs}
