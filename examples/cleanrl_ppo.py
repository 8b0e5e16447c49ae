"""PPO in one file, CleanRL-style, on a suite env: the proxy return logged beside the truth.

The shape of CleanRL's single-file scripts (Huang et al., "CleanRL", JMLR 2022; its
``ppo_continuous_action.py``): arguments, envs, agent and training loop in one readable file,
written here for the suite's one-response bandits (Box actions). The ``--num-envs`` copies sample
for ONE reward model (``rlhf_envs.vector.make_vec``, ``follower="shared"``: one experiment), and
``VectorRecordTruth`` puts each finished episode's true utility beside its proxy return.

    python examples/cleanrl_ppo.py --env-id RLHFNeuralBlindSpot-v0 --total-timesteps 20000 \
        --csv ppo.csv
"""

import argparse
import csv

import numpy as np
import torch
from torch import nn
from torch.distributions import Normal

import rlhf_envs
from rlhf_envs.vector import make_vec
from rlhf_envs.wrappers import VectorRecordTruth

BOX_ENV_IDS = [*rlhf_envs.BLIND_SPOT_ENV_IDS, "RLHFContextual-v0"]


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env-id", default="RLHFNeuralBlindSpot-v0", choices=BOX_ENV_IDS)
    p.add_argument("--total-timesteps", type=int, default=20_000)
    p.add_argument("--num-envs", type=int, default=4, help="samplers of the one reward model")
    p.add_argument("--num-steps", type=int, default=16, help="steps per copy per rollout")
    p.add_argument("--learning-rate", type=float, default=3e-3)
    p.add_argument("--update-epochs", type=int, default=4)
    p.add_argument("--num-minibatches", type=int, default=2)
    p.add_argument("--clip-coef", type=float, default=0.2)
    p.add_argument("--log-std-init", type=float, default=-1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--csv", help="write global_step, proxy and true utility per rollout here")
    return p.parse_args()


class Agent(nn.Module):
    """A Gaussian policy and a value function, each an MLP of the observation (the prompt)."""

    def __init__(self, obs_dim: int, act_dim: int, log_std_init: float):
        super().__init__()
        self.critic = nn.Sequential(nn.Linear(obs_dim, 64), nn.Tanh(), nn.Linear(64, 1))
        self.actor = nn.Sequential(nn.Linear(obs_dim, 64), nn.Tanh(), nn.Linear(64, act_dim))
        self.log_std = nn.Parameter(torch.full((act_dim,), log_std_init))

    def forward(self, obs: torch.Tensor, action: torch.Tensor | None = None):
        dist = Normal(self.actor(obs), self.log_std.exp())
        action = dist.sample() if action is None else action
        return action, dist.log_prob(action).sum(-1), self.critic(obs).squeeze(-1)


def main() -> None:
    args = parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)  # tiny tensors: one thread is the fastest
    envs = VectorRecordTruth(make_vec(args.env_id, args.num_envs))
    obs_dim = envs.single_observation_space.shape[0]
    agent = Agent(obs_dim, envs.single_action_space.shape[0], args.log_std_init)
    optimizer = torch.optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5)
    obs, _ = envs.reset(seed=args.seed)
    writer = csv.writer(open(args.csv, "w", newline="")) if args.csv else None  # noqa: SIM115
    if writer:
        writer.writerow(["global_step", "proxy_reward", "true_utility"])
    batch = args.num_envs * args.num_steps
    for update in range(1, args.total_timesteps // batch + 1):
        rollout, proxies, truths = [], [], []
        for _ in range(args.num_steps):  # collect: every step is one response per copy
            obs_t = torch.as_tensor(obs, dtype=torch.float32)
            with torch.no_grad():
                action, logp, value = agent(obs_t)
            obs, reward, terminated, _, infos = envs.step(action.numpy())
            assert terminated.all()  # one-response episodes: the return of a step is its reward
            rollout.append((obs_t, action, logp, value, torch.as_tensor(reward).float()))
            done = infos["_episode"]
            proxies += list(infos["episode"]["proxy_reward"][done])
            truths += list(infos["episode"]["true_utility"][done])
        b_obs, b_act, b_logp, b_val, b_ret = (torch.cat(x) for x in zip(*rollout, strict=True))
        b_adv = b_ret - b_val
        for _ in range(args.update_epochs):  # learn: the clipped surrogate and the value loss
            for mb in torch.randperm(batch).chunk(args.num_minibatches):
                _, logp, value = agent(b_obs[mb], b_act[mb])
                ratio = (logp - b_logp[mb]).exp()
                adv = (b_adv[mb] - b_adv[mb].mean()) / (b_adv[mb].std() + 1e-8)
                clipped = ratio.clamp(1 - args.clip_coef, 1 + args.clip_coef)
                pg_loss = -torch.min(ratio * adv, clipped * adv).mean()
                loss = pg_loss + 0.5 * ((value - b_ret[mb]) ** 2).mean()
                optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(agent.parameters(), 0.5)
                optimizer.step()
        step, proxy, truth = update * batch, float(np.mean(proxies)), float(np.mean(truths))
        print(f"global_step={step} episodic proxy={proxy:.3f} true utility={truth:.3f}")
        if writer:
            writer.writerow([step, proxy, truth])
    envs.close()


if __name__ == "__main__":
    main()
