"""The one list of agents that every tool reads (``baselines.run``, ``sweep``, ``bench``,
``leaderboard`` and the LLM track); any other agent is named ``module:Class`` (:func:`get`).
"""

from __future__ import annotations

import importlib

from agents.aggregate import AggregateAgent
from agents.defences import EnsembleAgent, KLAgent, StaticAgent
from agents.elite_anchor import EliteAnchorAgent, EliteEnsembleAgent
from agents.foresight import FPOAgent, FPOExactAgent, FPORelaxedAgent, FPORelaxedGradAgent
from agents.naive import NaiveAgent
from agents.oracle import OracleAgent, OracleValuesAgent
from agents.reinit import ReinitAgent
from agents.warm import WARMAgent
from agents.whitebox import READS, Agent

#: Built-in agents, in the order tables list them.
BUILTIN: dict[str, type[Agent]] = {
    cls.name: cls
    for cls in (
        NaiveAgent,
        FPOAgent,
        FPORelaxedAgent,
        FPORelaxedGradAgent,
        FPOExactAgent,
        StaticAgent,
        KLAgent,
        EnsembleAgent,
        WARMAgent,
        AggregateAgent,
        ReinitAgent,
        EliteAnchorAgent,
        EliteEnsembleAgent,
        OracleAgent,
        OracleValuesAgent,
    )
}

#: The agent every other is compared against (probability of improvement, "x naive" speed).
REFERENCE = NaiveAgent.name


def get(spec: str) -> type[Agent]:
    """The agent class for a built-in name or a ``module:Class`` path (else a one-line
    ``ValueError``: unknown, not importable, not an :class:`~agents.whitebox.Agent`, bad name)."""
    if spec in BUILTIN:
        return BUILTIN[spec]
    if not isinstance(spec, str) or ":" not in spec:
        raise ValueError(
            f"unknown agent {spec!r}; known: {', '.join(BUILTIN)}, or module:Class for your own"
        )
    module, _, attr = spec.partition(":")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"cannot load agent {spec!r}: {e}") from None
    if not (isinstance(cls, type) and issubclass(cls, Agent)):
        raise ValueError(f"agent {spec!r} is not a subclass of agents.Agent")
    if not cls.name or cls.name == Agent.name or "/" in cls.name or cls.name in BUILTIN:
        raise ValueError(
            f"agent {spec!r} needs its own class attribute name (not {cls.name!r}; no '/', "
            "not a built-in name)"
        )
    bad = sorted(set(cls.reads) - set(READS))
    if bad:
        raise ValueError(f"agent {spec!r} declares unknown reads {bad}; allowed: {READS}")
    return cls


def names() -> tuple[str, ...]:
    return tuple(BUILTIN)


def llm_names() -> tuple[str, ...]:
    """Built-in agents the LLM track implements (those with an ``llm_penalty`` form)."""
    return tuple(n for n, c in BUILTIN.items() if c.llm_penalty is not None)


def with_role(role: str) -> tuple[str, ...]:
    """Built-in agents of one role (``baseline``, ``method`` or ``ceiling``)."""
    return tuple(n for n, c in BUILTIN.items() if c.role == role)


def describe() -> str:
    """The built-in agents, one line each: name, role, reads, summary (``--list-agents``)."""
    import inspect

    lines = []
    for name, cls in BUILTIN.items():
        summary = (inspect.getdoc(cls) or "").split("\n\n")[0].replace("\n", " ")
        reads = ",".join(cls().declared_reads())
        lines.append(f"{name:<17} {cls.role:<8}  {reads:<40}  {summary}")
    return "\n".join(lines)
