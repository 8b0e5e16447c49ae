"""``RLHFNeuralBlindSpot-v0``: the blind-spot env with an MLP reward model retrained by Adam."""

from __future__ import annotations

from typing import Any

from rlhf_envs.blind_spot import BlindSpotEnv, BlindSpotVectorEnv

NEURAL_DEFAULTS: dict[str, Any] = {
    "dims": 10,
    "signal_dims": 2,
    "target_value": 2.5,
    "utility_width": 0.2,
    "reward_model": "mlp",
    "rm_hidden": (32, 32),
    "rm_init_noise": 0.1,
    "rm_optimizer": "adam",
    "rm_lr": 1e-3,
    "rm_weight_decay": 1e-3,
    "buffer_size": 50,
    "samples_per_round": 5,
}


class NeuralBlindSpotEnv(BlindSpotEnv):
    """Iterative RLHF with an MLP reward model (the paper's neural environment).

    ## Description
    As :class:`~rlhf_envs.blind_spot.BlindSpotEnv` (same feedback, info, episodes and white-box
    access), with the defaults of the neural simulation of Gauthier, Bach & Jordan
    (arXiv 2605.04266, Sec. 3): ``d = 10``; ``U(y) = 10 exp(-0.2 ||y - y*||^2)`` with
    ``y* = 2.5`` on dims 0 and 1; RM = MLP ``10 -> 32 -> 32 -> 1`` with Softplus, weights
    ``N(0, 0.1^2)``, zero biases; Adam (lr 1e-3, weight decay 1e-3) minimising the squared error
    on a FIFO buffer of the last 50 labelled responses; 5 responses labelled per round, then one
    RM step.

    ## Action Space
    ``Box(-action_bound, action_bound, (dims,), float32)`` (default ``dims = 10``), checked as
    in the linear env.

    ## Observation Space
    ``Box(0, 1, (1,), float32)``, always ``[0.]`` (no prompt).

    ## Rewards
    ``r_phi(y)``, the current MLP reward model's score, computed before the RM learns from ``y``.

    ## True utility vs feedback
    As in the linear env, with the defaults above; ``info["true_utility"]``, never the reward.

    ## Blind spots
    The MLP starts with random errors everywhere and only learns where the policy samples, so its
    overrated regions move with the policy. ``blind_spot_bias`` on ``blind_spot_dims`` adds a
    trainable linear term ``s . y`` with ``s0`` = the bias on those dims; ``labeler_bias`` biases
    the labeler as in the linear env.

    ## Arguments
    All of :class:`rlhf_envs.core.BlindSpotConfig`; ``rm_hidden`` sets the MLP widths and
    ``rm_init_noise`` the initial weight std.

    ## Version History
    * v0: initial release.
    """

    defaults = NEURAL_DEFAULTS


class NeuralBlindSpotVectorEnv(BlindSpotVectorEnv):
    """Batched :class:`NeuralBlindSpotEnv` (``vectorization_mode="vector_entry_point"``)."""

    single_env_cls = NeuralBlindSpotEnv
