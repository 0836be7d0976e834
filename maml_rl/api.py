"""The Python API for one new task: make its env, adapt a trained policy to it, act.

Training and loading are :func:`maml_rl.run.train` and :func:`maml_rl.run.load_policy` (a
:class:`~maml_rl.meta_sgd.MetaPolicy`: the network and, for Meta-SGD, its learned step sizes);
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

from maml_rl.config import TrainConfig
from maml_rl.family import ActionMapping, TaskFamily
from maml_rl.inner_loop import fine_tune, step_sizes
from maml_rl.meta_sgd import MetaPolicy
from maml_rl.policy import MLPPolicy, Params, is_task_batched
from maml_rl.seeding import derive_seed
from maml_rl.settings import AdvantageSettings, SamplerSettings


def make_env(config: TrainConfig, task: Any = None) -> gym.Env:
    """A single env of the config's task family (its ``env_kwargs`` and horizon), set to
    ``task`` when given (otherwise pass ``reset(options={"task": task})``)."""
    return TaskFamily.from_config(config).make_env(task)


def actions_for_env(
    policy_actions: np.ndarray,
    action_space: gym.spaces.Box | gym.spaces.Discrete,
    normalize_actions: bool,
) -> np.ndarray:
    """What the sampler sends to the env for the policy's actions
    (:class:`~maml_rl.family.ActionMapping`): for a Box, with ``normalize_actions`` the
    policy's [-1, 1]^d mapped onto the Box (rllab's ``normalize``), otherwise clipped to the
    Box; for a Discrete, the categorical policy's indices plus the space's ``start``."""
    to_env = ActionMapping(action_space, normalize_actions)
    return to_env(policy_actions).astype(action_space.dtype)


@dataclass
class AdaptedPolicy:
    """A policy adapted to one task: its parameters after the gradient steps, and ``act``.

    ``returns[j]`` is the mean return of the rollouts step j adapted on (``returns[0]``: the
    policy before adaptation).
    """

    policy: MLPPolicy
    params: Params
    config: TrainConfig
    action_space: gym.spaces.Box | gym.spaces.Discrete
    returns: list[float] = field(default_factory=list)

    def act(
        self,
        observation: np.ndarray,
        deterministic: bool = True,
        rng: np.random.Generator | None = None,
    ) -> np.ndarray:
        """The env action for ``observation`` (``[obs_dim]`` or ``[N, obs_dim]``), mapped onto
        the action space as in training (:func:`actions_for_env`).

        Box: the policy's mean (``deterministic``) or a Gaussian sample drawn with ``rng``.
        Discrete: the most likely action (``deterministic``) or a categorical sample drawn with
        ``rng`` (Gumbel-max, as the sampler draws it); an integer, or ``[N]`` integers.
        """
        obs = torch.as_tensor(np.asarray(observation), dtype=torch.float32)
        single = obs.dim() == 1
        batch = obs.reshape(1, -1, obs.shape[-1])  # [task = 1, N, obs_dim]
        with torch.no_grad():
            output = self.policy(batch, self.params)
        if not deterministic and rng is None:
            rng = np.random.default_rng()
        u = self.policy.distribution.sample_numpy(output, None if deterministic else rng)
        action = actions_for_env(u, self.action_space, self.config.normalize_actions)
        return action[0] if single else action


def adapt(
    policy: MetaPolicy | MLPPolicy,
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
    ``inner_lr``), later steps ``alpha / 2`` (the evaluation schedule). ``policy`` is what
    :func:`~maml_rl.run.load_policy` returns, a :class:`~maml_rl.meta_sgd.MetaPolicy` (that of
    a Meta-SGD run steps with its learned step sizes times ``alpha / inner_lr``, the same
    halving), or a bare :class:`~maml_rl.policy.MLPPolicy` (scalar steps). ``seed`` fixes
    the rollouts. Rewards or advantages that cannot be used raise
    :class:`~maml_rl.errors.UnusableBatchError`.
    """
    if num_steps < 0:
        raise ValueError(f"num_steps must be >= 0, got {num_steps}")
    k = int(episodes or config.episodes_per_task)
    lr = config.inner_lr if alpha is None else float(alpha)
    meta = policy if isinstance(policy, MetaPolicy) else MetaPolicy(policy)
    family = TaskFamily.from_config(config)
    run = fine_tune(
        meta.policy,
        family,
        [task],
        step_sizes(lr, num_steps),
        k,
        [derive_seed(seed, j) for j in range(num_steps + 1)],
        config.part(AdvantageSettings),
        config.inner_objective,
        lambda j: "adaptation",
        config.inner_lr,
        config.part(SamplerSettings),
        meta.step_sizes,
    )
    returns = [float(batch.episode_returns.double().mean()) for batch in run.batches]
    params = run.params[-1]
    if not is_task_batched(params):  # no step taken: give the parameters a task dimension
        params = {name: p.unsqueeze(0) for name, p in params.items()}
    return AdaptedPolicy(meta.policy, params, config, family.action_space, returns)


__all__: Sequence[str] = ["AdaptedPolicy", "actions_for_env", "adapt", "make_env"]
