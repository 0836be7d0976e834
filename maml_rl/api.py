"""The Python API for one new task: make its env, adapt a trained policy to it, act.

Training and loading are :func:`maml_rl.trainer.train` and :func:`maml_rl.trainer.load_policy`;
all are exported by the package (``maml_rl.train``, ``maml_rl.load_policy``, ``maml_rl.adapt``,
...). The README's "Python API" section is a runnable example (run by tests/test_api.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from maml_rl.adaptation import adapt as adapt_params
from maml_rl.advantages import checked_advantages
from maml_rl.batch import loss_inputs
from maml_rl.config import TrainConfig
from maml_rl.policy import GaussianMLPPolicy, Params
from maml_rl.sampler import VectorSampler, make_family_env, unnormalize_actions
from maml_rl.trainer import derive_seed, prepare_env


def make_env(config: TrainConfig, task: Any = None) -> gym.Env:
    """A single env of the config's task family (its ``env_kwargs`` and horizon), set to
    ``task`` when given (otherwise pass ``reset(options={"task": task})``)."""
    env_id = prepare_env(config)
    extra: dict[str, Any] = {}
    if config.max_episode_steps is not None:
        extra["max_episode_steps"] = config.max_episode_steps
    if task is not None:
        extra["task"] = task
    return make_family_env(env_id, config.env_kwargs, **extra)


def actions_for_env(
    policy_actions: np.ndarray, action_space: gym.spaces.Box, normalize_actions: bool
) -> np.ndarray:
    """What the sampler sends to the env for the policy's actions: with ``normalize_actions``
    the policy's [-1, 1]^d mapped onto the Box (rllab's ``normalize``,
    :func:`~maml_rl.sampler.unnormalize_actions`), otherwise clipped to the Box."""
    low, high = action_space.low, action_space.high
    if normalize_actions:
        return unnormalize_actions(policy_actions, low, high).astype(action_space.dtype)
    return np.clip(policy_actions, low, high).astype(action_space.dtype)


@dataclass
class AdaptedPolicy:
    """A policy adapted to one task: its parameters after the gradient steps, and ``act``.

    ``returns[j]`` is the mean return of the rollouts step j adapted on (``returns[0]``: the
    policy before adaptation).
    """

    policy: GaussianMLPPolicy
    params: Params
    config: TrainConfig
    action_space: gym.spaces.Box
    returns: list[float] = field(default_factory=list)

    def act(
        self,
        observation: np.ndarray,
        deterministic: bool = True,
        rng: np.random.Generator | None = None,
    ) -> np.ndarray:
        """The env action for ``observation`` (``[obs_dim]`` or ``[N, obs_dim]``): the policy's
        mean (``deterministic``) or a Gaussian sample drawn with ``rng``, mapped onto the action
        space as in training (:func:`actions_for_env`)."""
        obs = torch.as_tensor(np.asarray(observation), dtype=torch.float32)
        single = obs.dim() == 1
        batch = obs.reshape(1, -1, obs.shape[-1])  # [task = 1, N, obs_dim]
        with torch.no_grad():
            mean, log_std = self.policy(batch, self.params)
        u = mean.reshape(-1, mean.shape[-1]).numpy()
        if not deterministic:
            rng = rng if rng is not None else np.random.default_rng()
            std = log_std.exp().reshape(-1, mean.shape[-1]).numpy()
            u = u + std * rng.standard_normal(u.shape).astype(np.float32)
        action = actions_for_env(u, self.action_space, self.config.normalize_actions)
        return action[0] if single else action


def adapt(
    policy: GaussianMLPPolicy,
    config: TrainConfig,
    task: Any,
    num_steps: int = 1,
    episodes: int | None = None,
    alpha: float | None = None,
    seed: int = 0,
) -> AdaptedPolicy:
    """Adapt ``policy`` to ``task`` with ``num_steps`` policy-gradient steps, as meta-training's
    inner loop does: each step samples ``episodes`` rollouts (default: the config's
    ``episodes_per_task``) with the current parameters, computes advantages with the config's
    gamma, GAE lambda, normalisation and linear baseline, and steps with ``alpha`` (default
    ``inner_lr``), later steps ``alpha / 2`` (the evaluation schedule). ``seed`` fixes the
    rollouts. Rewards or advantages that cannot be used raise
    :class:`~maml_rl.errors.UnusableBatchError`.
    """
    if num_steps < 0:
        raise ValueError(f"num_steps must be >= 0, got {num_steps}")
    k = int(episodes or config.episodes_per_task)
    lr = config.inner_lr if alpha is None else float(alpha)
    policy = policy.cpu()
    sampler = VectorSampler.from_config(prepare_env(config), policy, config)
    params: Params = {name: p.detach() for name, p in policy.params().items()}
    returns: list[float] = []
    try:
        for j in range(num_steps + 1):
            batch = sampler.sample([task], params, k, derive_seed(seed, j))
            returns.append(float(batch.episode_returns.double().mean()))
            if j == num_steps:
                break
            params = _step(policy, config, batch, params, lr if j == 0 else lr / 2.0)
    finally:
        sampler.close()
    env = make_env(config)
    space = env.action_space
    env.close()
    if params["log_std"].dim() == 1:  # no step taken: give the parameters a task dimension
        params = {name: p.unsqueeze(0) for name, p in params.items()}
    return AdaptedPolicy(policy, params, config, space, returns)


def _step(
    policy: GaussianMLPPolicy, config: TrainConfig, batch: Any, params: Params, lr: float
) -> Params:
    adv = checked_advantages(
        batch, config.gamma, config.gae_lambda, config.normalize_advantages, "adaptation"
    )
    leaf = {name: p.detach().requires_grad_(True) for name, p in params.items()}
    new = adapt_params(
        policy, leaf, [loss_inputs(batch, adv)], [lr], config.inner_objective, create_graph=False
    )
    return {name: p.detach() for name, p in new.items()}


__all__: Sequence[str] = ["AdaptedPolicy", "actions_for_env", "adapt", "make_env"]
