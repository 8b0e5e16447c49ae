"""Leaders of the iterative-RLHF game: naive, FPO (practical / relaxed / exact), oracle, and
the usual defences (static RM, KL anchor, RM ensemble).

An agent is a scoring rule with a declaration of what it reads (:class:`Agent`); the white-box
gradient optimiser (:meth:`Agent.learn`) and any stable-baselines3 algorithm (through
:class:`agents.wrappers.AgentRewardWrapper`) ascend it. Every tool finds agents in
:mod:`agents.registry`. FPO maths lives in :mod:`agents.fpo`.
"""

from agents.defences import EnsembleAgent, KLAgent, StaticAgent
from agents.foresight import FPOAgent, FPOExactAgent, FPORelaxedAgent, FPORelaxedGradAgent
from agents.naive import NaiveAgent
from agents.oracle import OracleAgent, OracleValuesAgent
from agents.registry import BUILTIN as AGENTS
from agents.whitebox import READS, Agent, WhiteBoxAgent, WhiteBoxConfig, learn_together

__all__ = [
    "AGENTS",
    "READS",
    "Agent",
    "EnsembleAgent",
    "KLAgent",
    "StaticAgent",
    "FPOAgent",
    "FPOExactAgent",
    "FPORelaxedAgent",
    "FPORelaxedGradAgent",
    "NaiveAgent",
    "OracleAgent",
    "OracleValuesAgent",
    "WhiteBoxAgent",
    "WhiteBoxConfig",
    "learn_together",
]
