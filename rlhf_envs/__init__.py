"""Gymnasium environments for iterative RLHF with retrained reward models and blind spots.

Importing this package registers every environment (all registrations live here):

>>> import gymnasium as gym, rlhf_envs
>>> env = gym.make("RLHFBlindSpot-v0", signal_dims=3, feedback="rating")
"""

from gymnasium.envs.registration import register, registry

from rlhf_envs.blind_spot import BlindSpotEnv, BlindSpotVectorEnv
from rlhf_envs.core import BlindSpotConfig, RLHFCore
from rlhf_envs.neural_blind_spot import NeuralBlindSpotEnv, NeuralBlindSpotVectorEnv
from rlhf_envs.reward_models import LinearRewardModel, MLPRewardModel, OptimizerConfig

__version__ = "0.1.0"

ENV_IDS = ["RLHFBlindSpot-v0", "RLHFNeuralBlindSpot-v0"]

_SPECS = {
    "RLHFBlindSpot-v0": ("blind_spot:BlindSpotEnv", "blind_spot:BlindSpotVectorEnv"),
    "RLHFNeuralBlindSpot-v0": (
        "neural_blind_spot:NeuralBlindSpotEnv",
        "neural_blind_spot:NeuralBlindSpotVectorEnv",
    ),
}

for _id, (_single, _vector) in _SPECS.items():
    if _id not in registry:
        register(
            id=_id,
            entry_point=f"rlhf_envs.{_single}",
            vector_entry_point=f"rlhf_envs.{_vector}",
        )

__all__ = [
    "ENV_IDS",
    "BlindSpotConfig",
    "BlindSpotEnv",
    "BlindSpotVectorEnv",
    "LinearRewardModel",
    "MLPRewardModel",
    "NeuralBlindSpotEnv",
    "NeuralBlindSpotVectorEnv",
    "OptimizerConfig",
    "RLHFCore",
]
