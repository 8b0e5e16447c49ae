"""Gymnasium environments for iterative RLHF with retrained reward models and blind spots.

Importing this package registers every environment (all registrations live here):

>>> import gymnasium as gym, rlhf_envs
>>> env = gym.make("RLHFBlindSpot-v0", signal_dims=3, feedback="rating")
"""

from functools import partial

from gymnasium.envs.registration import register, registry

from rlhf_envs.blind_spot import BlindSpotEnv, BlindSpotVectorEnv
from rlhf_envs.contextual import ContextualConfig, ContextualEnv
from rlhf_envs.core import BlindSpotConfig, FollowerConfig, RLHFCore
from rlhf_envs.neural_blind_spot import NeuralBlindSpotEnv, NeuralBlindSpotVectorEnv
from rlhf_envs.reward_models import LinearRewardModel, MLPRewardModel, OptimizerConfig
from rlhf_envs.verbosity import VerbosityConfig, VerbosityEnv

__version__ = "0.1.0"

# Box-response bandits with the paper's blind spots and a batched vector env (``submit``).
BLIND_SPOT_ENV_IDS = ["RLHFBlindSpot-v0", "RLHFNeuralBlindSpot-v0"]
WHITE_BOX_ENV_IDS = BLIND_SPOT_ENV_IDS  # the envs with white-box agents (baselines' optimiser)
# Responses mapped to feature vectors for the shared follower.
FEATURE_ENV_IDS = ["RLHFVerbosity-v0", "RLHFContextual-v0"]
ENV_IDS = BLIND_SPOT_ENV_IDS + FEATURE_ENV_IDS


def _copies(env_id: str, num_envs: int, **kw):  # gym.make_vec(id, n) of an env with no batched one
    from rlhf_envs.vector import make_vec  # (it imports SB3: not when the package is imported)

    return make_vec(env_id, num_envs, "independent", "sync", **kw)


# id -> (entry point, batched vector entry point or None: independent sync copies), in this package
_SPECS: dict[str, tuple[str, str | None]] = {
    "RLHFBlindSpot-v0": ("blind_spot:BlindSpotEnv", "blind_spot:BlindSpotVectorEnv"),
    "RLHFNeuralBlindSpot-v0": (
        "neural_blind_spot:NeuralBlindSpotEnv",
        "neural_blind_spot:NeuralBlindSpotVectorEnv",
    ),
    "RLHFVerbosity-v0": ("verbosity:VerbosityEnv", None),
    "RLHFContextual-v0": ("contextual:ContextualEnv", None),
}

for _id, (_single, _vector) in _SPECS.items():
    if _id not in registry:  # gym.make_vec(id, n): n independent experiments on all four
        register(
            id=_id,
            entry_point=f"rlhf_envs.{_single}",
            vector_entry_point=f"rlhf_envs.{_vector}" if _vector else partial(_copies, _id),
        )

__all__ = [
    "BLIND_SPOT_ENV_IDS",
    "ENV_IDS",
    "FEATURE_ENV_IDS",
    "BlindSpotConfig",
    "BlindSpotEnv",
    "BlindSpotVectorEnv",
    "ContextualConfig",
    "ContextualEnv",
    "FollowerConfig",
    "LinearRewardModel",
    "MLPRewardModel",
    "NeuralBlindSpotEnv",
    "NeuralBlindSpotVectorEnv",
    "OptimizerConfig",
    "RLHFCore",
    "VerbosityConfig",
    "VerbosityEnv",
    "WHITE_BOX_ENV_IDS",
]
