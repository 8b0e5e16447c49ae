"""The ``kl`` defence for on-policy stable-baselines3 algorithms (PPO, A2C).

The white-box ``kl`` agent (:class:`agents.defences.KLAgent`) anchors a response to the initial
one. Through SB3 the anchor is the usual RLHF one instead: every step's reward loses
``kl_coef * (log pi_theta(a|s) - log pi_0(a|s))``, the single-sample estimate of the KL
divergence from the policy being trained, ``pi_theta``, to a frozen copy of the policy as it was
when training started, ``pi_0``. Its expectation under ``pi_theta`` is ``kl_coef * KL(pi_theta ||
pi_0)``, so maximising the penalised return maximises reward minus ``kl_coef`` times the KL.
Sources: Ziegler et al., "Fine-Tuning Language Models from Human Preferences", arXiv 1909.08593
(the penalised reward, Sec. 2); Stiennon et al., "Learning to Summarize from Human Feedback",
arXiv 2009.01325 (the same per-token penalty against the supervised policy).

How it plugs into SB3 (checked against ``OnPolicyAlgorithm.collect_rollouts``, SB3 2.9):
``callback.on_step()`` runs after ``env.step``, *before* truncated episodes are bootstrapped (in
place) and before ``rollout_buffer.add(self._last_obs, actions, rewards, ...)``; then
``locals["rewards"]`` is the array that goes into the buffer, ``locals["actions"]`` the sampled
(unclipped) actions and ``model._last_obs`` the observation they were taken in. Subtracting the
penalty from ``rewards`` in place makes the buffer see ``env reward - penalty``, once.

Both log-probabilities are ``policy.get_distribution(obs).log_prob(a)``, of the current and the
frozen policy, so the penalty is exactly 0 while they are equal (the first rollout).

The env is not touched; each step's penalty goes to ``info["kl_penalty"]``. On-policy algorithms
only: SAC replays transitions, against which a penalty from a frozen policy would be stale.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.utils import obs_as_tensor

from rlhf_envs.core import check_float


class KLPenaltyCallback(BaseCallback):
    """Subtract ``kl_coef * (log pi_theta(a|s) - log pi_0(a|s))`` from each step's reward.

    ``pi_0``: a frozen copy of ``model.policy`` from the first training start. PPO or A2C.
    """

    def __init__(self, kl_coef: float, verbose: int = 0):
        super().__init__(verbose)
        self.kl_coef = kl_coef
        check_float(self, "kl_coef", 0.0, strict=False)
        self.reference = None  # the frozen initial policy, set at training start

    def _on_training_start(self) -> None:
        if not isinstance(self.model, OnPolicyAlgorithm):
            raise TypeError(
                "KLPenaltyCallback needs an on-policy algorithm (PPO, A2C), "
                f"got {type(self.model).__name__}"
            )
        if self.reference is None:
            ref = copy.deepcopy(self.model.policy)
            ref.set_training_mode(False)
            ref.requires_grad_(False)
            self.reference = ref

    def log_probs(self, policy, obs, actions: np.ndarray) -> torch.Tensor:
        """``log policy(actions | obs)`` for a batch of (observation, stored action) pairs."""
        obs_t = obs_as_tensor(obs, policy.device)
        act_t = torch.as_tensor(actions, device=policy.device)
        if isinstance(policy.action_space, spaces.Discrete):
            act_t = act_t.long().flatten()  # as PPO/A2C's train() feed the buffer's actions
        else:
            act_t = act_t.reshape(-1, *policy.action_space.shape)
        with torch.no_grad():
            return policy.get_distribution(obs_t).log_prob(act_t)

    def penalty(self, obs, actions: np.ndarray) -> np.ndarray:
        """``kl_coef * (log pi_theta - log pi_0)`` per env, float64, shape ``(n_envs,)``."""
        lp = self.log_probs(self.model.policy, obs, actions)
        lp0 = self.log_probs(self.reference, obs, actions)
        return self.kl_coef * (lp - lp0).double().cpu().numpy().reshape(-1)

    def _on_step(self) -> bool:
        rewards = self.locals["rewards"]  # the very array SB3 adds to the rollout buffer next
        pen = self.penalty(self.model._last_obs, self.locals["actions"])
        rewards -= pen.astype(rewards.dtype)
        for info, p in zip(self.locals["infos"], pen, strict=True):
            info["kl_penalty"] = float(p)
        return True
