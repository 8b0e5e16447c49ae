"""Planning runs: the command line's settings checked and turned into jobs (:class:`Job`)."""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from baselines import results

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
#: default caps on one command's size; --max-runs / --max-rounds raise them
MAX_RUNS = 1000
MAX_ROUNDS = 1_000_000


class CLIError(Exception):
    """A usage problem, reported as one line and exit status 2."""


def parse_seeds(text: str, max_runs: int = MAX_RUNS) -> list[int]:
    """``"0-9"``, ``"3"``, ``"0,2,5"`` or ``"0-4,10-12"`` -> sorted unique seeds.

    Seeds are ints in ``[0, 2^31)``; more than ``max_runs`` of them is refused before any list
    is built (``--max-runs`` raises the cap).
    """
    parts: list[tuple[int, int]] = []
    for part in str(text).split(","):
        part = part.strip()
        if m := re.fullmatch(r"(\d{1,30})-(\d{1,30})", part):
            lo, hi = int(m[1]), int(m[2])
            if lo > hi:
                raise CLIError(f"--seeds: range {part!r} is empty (start > end)")
        elif re.fullmatch(r"\d{1,30}", part):
            lo = hi = int(part)
        else:
            raise CLIError(f"--seeds: cannot read {part!r}; use e.g. 0-9, 3 or 0,2,5 (ints >= 0)")
        if hi >= 2**31:
            raise CLIError(f"--seeds must be ints in [0, 2^31), got {part!r}")
        parts.append((lo, hi))
    if sum(hi - lo + 1 for lo, hi in parts) > max_runs:
        raise CLIError(
            f"--seeds: {text!r} asks for more than {max_runs} seeds; raise the cap with "
            "--max-runs if you mean it"
        )
    return sorted({s for lo, hi in parts for s in range(lo, hi + 1)})


def parse_kwargs(items: list[str] | None, flag: str) -> dict[str, Any]:
    """``["k=v", ...]`` -> dict, values read as YAML (numbers, bools, lists, strings)."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item or item.startswith("="):
            raise CLIError(f"{flag}: expected key=value, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = _read_value(value)
    return out


def _read_value(text: str) -> Any:
    value = results._number(text)  # a number first: YAML 1.1 would read "1e6" as a string
    if not isinstance(value, str):
        return value
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def load_defaults(env_id: str) -> dict[str, Any]:
    table = yaml.safe_load((CONFIG_DIR / "whitebox.yaml").read_text()) or {}
    return table.get(env_id, {})


def yaml_settings(env_id: str, agent_cls: type, policy_optimizer: str = "whitebox") -> dict:
    """An agent's settings from the env's YAML: its section by name over the generic one
    (``agent:``, ``rounds`` or with SB3 ``sb3:``'s) where it applies (:func:`generic_settings`)."""
    defaults = load_defaults(env_id)
    rounds = defaults.get("rounds")
    if policy_optimizer != "whitebox":
        rounds = defaults.get("sb3", {}).get("rounds") or rounds
    generic = {**defaults.get("agent", {}), **({"rounds": rounds} if rounds is not None else {})}
    own = defaults.get("agents", {}).get(agent_cls.name, {})
    return {**generic_settings(agent_cls.config_cls, generic), **own}


@dataclass
class Job:
    """A batch of ``seeds`` of one (env, agent, settings) whose run folders are not finished."""

    env_id: str
    agent: str
    seeds: list[int]
    rounds: int
    env_kwargs: dict[str, Any]
    agent_config: dict[str, Any]
    out: str
    run_name: str
    policy_optimizer: str = "whitebox"
    hyperparams: dict[str, Any] = field(default_factory=dict)
    force: bool = False  # redo even if another process finishes the run first
    reads: str = ""  # what the agent declares it reads, comma-separated: all the judge gives it
    tuned: str = ""  # on a family config: which of its settings came from the family's tuning
    tensorboard: str | None = None  # output options, not settings: not in the config hash
    wandb: str | None = None

    def settings(self, seed: int) -> dict[str, Any]:
        """The settings of ``seed``'s run: its ``config.json``'s, which its config hash covers
        (SB3 runs add the optimiser and its hyperparameters)."""
        keys = ["env_id", "env_kwargs", "agent", "run_name", "agent_config", "rounds", "seed"]
        keys += ["policy_optimizer", "hyperparams"] if self.policy_optimizer != "whitebox" else []
        keys += ["tuned"] if self.tuned else []
        return {k: seed if k == "seed" else getattr(self, k) for k in keys}

    def digest(self, seed: int) -> str:
        return results.config_hash(self.settings(seed))


def family_settings(env_id: str, env_kwargs: dict[str, Any], agent: str) -> dict[str, Any]:
    """The agent's settings tuned on the train split of the family version that the env kwarg
    ``family`` names (the env's YAML ``families:``; ``{}`` off the families or if not tuned)."""
    name = str(env_kwargs.get("family") or "")
    version = name.split("/")[0] if re.match(r"v\d+/", name) else "v1"
    return load_defaults(env_id).get("families", {}).get(version, {}).get(agent, {}) if name else {}


def run_folder_name(agent_name: str, policy_optimizer: str = "whitebox", tag: str = "") -> str:
    """``AGENT[+ALGO][@TAG]``: the folder of an agent's runs under ``OUT/ENV/``."""
    name = agent_name if policy_optimizer == "whitebox" else f"{agent_name}+{policy_optimizer}"
    return f"{name}@{tag}" if tag else name


def generic_settings(config_cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """The generic settings ``values`` of the fields where ``config_cls`` keeps the default of
    :class:`agents.whitebox.WhiteBoxConfig` (a class's own default wins)."""
    from agents.whitebox import WhiteBoxConfig

    base = {f.name: f.default for f in fields(WhiteBoxConfig)}
    own = {f.name: f.default for f in fields(config_cls)}
    return {k: v for k, v in values.items() if own.get(k) == base.get(k)}


def _sb3_hyperparams(policy_optimizer, agent, section, sb3_kwargs) -> dict[str, Any]:
    """The SB3 algorithm's arguments: the env's YAML, then ``--sb3-kwargs`` (checked)."""
    import inspect

    from baselines.judge import algorithm
    from baselines.sb3_runner import ALGOS, allowed_algos

    if policy_optimizer not in ALGOS:
        raise CLIError(
            f"--policy-optimizer must be whitebox or one of {', '.join(ALGOS)}, got {policy_optimizer!r}"
        )
    if policy_optimizer not in allowed_algos(agent):
        raise CLIError(
            f"--policy-optimizer {policy_optimizer} does not work with --agent {agent} (on-policy "
            f"algorithms only); allowed --policy-optimizer for --agent {agent}: "
            f"{', '.join(allowed_algos(agent))}"
        )
    hyperparams = dict(section.get(policy_optimizer, {}))
    if sb3_kwargs:
        fixed = {"self", "policy", "env", "seed", "device", "verbose", "_init_setup_model"}
        allowed = set(inspect.signature(algorithm(policy_optimizer).__init__).parameters) - fixed
        unknown = sorted(set(sb3_kwargs) - allowed)
        if unknown:
            raise CLIError(
                f"--sb3-kwargs: unknown {policy_optimizer} argument(s) {unknown}; allowed: "
                f"{', '.join(sorted(allowed))}"
            )
        hyperparams.update(sb3_kwargs)
    return hyperparams


def plan(
    env_id: str,
    agent: str,
    seeds: list[int],
    rounds: int | None,
    env_kwargs: dict[str, Any],
    agent_kwargs: dict[str, Any],
    out: str | Path,
    force: bool = False,
    batch_size: int = 10,
    jobs: int = 1,
    tag: str = "",
    policy_optimizer: str = "whitebox",
    sb3_kwargs: dict[str, Any] | None = None,
    max_rounds: int = MAX_ROUNDS,
) -> tuple[list[Job], list[tuple[str, int]]]:
    """Validate one (env, agent, settings) over seeds and build its pending jobs.

    Everything is checked before anything runs. A setting comes from ``--rounds``, else
    ``agent_kwargs``, else the env's YAML (:func:`yaml_settings`); the built agent's are recorded.
    ``tag``: runs go to ``OUT/ENV/AGENT@TAG/seed_S``; ``policy_optimizer``: ``whitebox`` or an SB3
    algorithm (runs go to ``AGENT+ALGO``). Returns (jobs, skipped finished runs).
    """
    import gymnasium as gym

    import rlhf_envs  # (registers the envs)
    from baselines.judge import agent_class

    try:
        agent_cls = agent_class(agent)
    except ValueError as e:
        raise CLIError(f"--agent: {e}") from None
    if env_id not in gym.registry:
        known = ", ".join(rlhf_envs.ENV_IDS)
        raise CLIError(f"--env: unknown environment {env_id!r}; known: {known}")
    try:
        gym.make(env_id, **env_kwargs).close()
    except (TypeError, ValueError) as e:
        raise CLIError(f"--env-kwargs: {str(e).split(' was raised from')[0]}") from None
    hyperparams: dict[str, Any] = {}
    if policy_optimizer == "whitebox":
        if sb3_kwargs:
            raise CLIError("--sb3-kwargs needs an SB3 --policy-optimizer (ppo, sac or a2c)")
        if env_id not in rlhf_envs.WHITE_BOX_ENV_IDS:
            raise CLIError(
                f"--env: {env_id} has no white-box agents; use --policy-optimizer ppo (or sac, a2c)"
            )
    else:
        section = load_defaults(env_id).get("sb3", {})
        hyperparams = _sb3_hyperparams(policy_optimizer, agent, section, sb3_kwargs)
    allowed = [f.name for f in fields(agent_cls.config_cls)]
    unknown = sorted(set(agent_kwargs) - set(allowed))
    if unknown:
        raise CLIError(f"--agent-kwargs: unknown name(s) {unknown}; allowed: {allowed}")
    if rounds is not None and agent_kwargs.get("rounds", rounds) != rounds:
        raise CLIError(
            f"--rounds {rounds} and --agent-kwargs rounds={agent_kwargs['rounds']} disagree; "
            "give one"
        )
    tuned = {
        k: v
        for k, v in family_settings(env_id, env_kwargs, agent_cls.name).items()
        if k not in agent_kwargs and policy_optimizer == "whitebox"
    }
    resolved = {
        **yaml_settings(env_id, agent_cls, policy_optimizer),
        **tuned,
        **agent_kwargs,
        **({"rounds": rounds} if rounds is not None else {}),
    }
    try:
        built = agent_cls(agent_cls.config_cls(**resolved))
    except (TypeError, ValueError) as e:
        raise CLIError(f"--agent-kwargs: {e}") from None
    agent_config = built.config.to_dict()
    rounds = built.config.rounds
    if rounds > max_rounds:
        raise CLIError(
            f"--rounds: {rounds} rounds per run is above the limit of {max_rounds}; "
            "raise it with --max-rounds if you mean it"
        )
    reads = ",".join(built.declared_reads(policy_optimizer != "whitebox"))
    run_name = run_folder_name(agent_cls.name, policy_optimizer, tag)
    settings = (env_id, agent, seeds, rounds, env_kwargs, agent_config, str(out), run_name)
    job = Job(*settings, policy_optimizer, hyperparams, force, reads, ",".join(sorted(tuned)))
    pending, skipped = [], []
    for seed in seeds:
        folder = results.run_dir(out, env_id, run_name, seed)
        state, why = results.run_state(folder, job.digest(seed))
        if state == "other" and not force:
            raise CLIError(
                f"{folder} holds a finished run with other settings; pass --force to redo it "
                "or choose another --out"
            )
        if state == "done" and not force:
            skipped.append((run_name, seed))
            continue
        if state == "damaged":
            print(f"redoing {folder}: {why}", file=sys.stderr)
        pending.append(seed)
    n_chunks = max(-(-len(pending) // batch_size), min(jobs, len(pending)))
    chunks = [pending[i::n_chunks] for i in range(n_chunks)]
    return [replace(job, seeds=chunk) for chunk in chunks if chunk], skipped
