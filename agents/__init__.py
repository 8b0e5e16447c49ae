"""Leaders of the iterative-RLHF game: naive, FPO (practical / relaxed / exact), oracle, and
the usual defences (static RM, KL anchor, RM ensemble).

All agents share one interface: build from a config dataclass and a seed (or a list of seeds for
a vectorised env), then ``history = agent.learn(env)``. FPO maths lives in :mod:`agents.fpo`.
"""

from agents.defences import EnsembleAgent, KLAgent, StaticAgent
from agents.foresight import FPOAgent, FPOExactAgent, FPORelaxedAgent
from agents.naive import NaiveAgent
from agents.oracle import OracleAgent
from agents.whitebox import WhiteBoxAgent, WhiteBoxConfig

AGENTS: dict[str, type[WhiteBoxAgent]] = {
    cls.name: cls
    for cls in (
        NaiveAgent,
        FPOAgent,
        FPORelaxedAgent,
        FPOExactAgent,
        OracleAgent,
        StaticAgent,
        KLAgent,
        EnsembleAgent,
    )
}

__all__ = [
    "AGENTS",
    "EnsembleAgent",
    "KLAgent",
    "StaticAgent",
    "FPOAgent",
    "FPOExactAgent",
    "FPORelaxedAgent",
    "NaiveAgent",
    "OracleAgent",
    "WhiteBoxAgent",
    "WhiteBoxConfig",
]
