"""Leaders of the iterative-RLHF game: naive, FPO (practical / relaxed / exact), oracle, and
the usual defences (static RM, KL anchor, RM ensemble, ...).

An agent is a scoring rule with a declaration of what it reads (:class:`Agent`); the white-box
gradient optimiser (:meth:`Agent.learn`) and any stable-baselines3 algorithm (through
:class:`agents.wrappers.AgentRewardWrapper`) ascend it. :data:`AGENTS` (from
:mod:`agents.registry`) is the one list of built-in agents: each is exported here under its class
name, and ``python -m baselines.run --list-agents`` prints them. FPO maths lives in
:mod:`agents.fpo`.
"""

from agents.registry import BUILTIN as AGENTS
from agents.whitebox import READS, Agent, WhiteBoxConfig, learn_together

globals().update({cls.__name__: cls for cls in AGENTS.values()})

__all__ = [
    "AGENTS",
    "READS",
    "Agent",
    "WhiteBoxConfig",
    "learn_together",
    *(cls.__name__ for cls in AGENTS.values()),
]
