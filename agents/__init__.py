"""Leaders of the iterative-RLHF game (:class:`Agent`): naive, FPO (maths in :mod:`agents.fpo`),
the usual defences and the oracle ceilings. :data:`AGENTS` is :data:`agents.registry.BUILTIN`,
each exported here under its class name."""

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
