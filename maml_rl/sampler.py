"""Rollouts: one episode loop for every batched rollout, and the samplers built on it.

:func:`run_episodes` runs one episode in each sub-env of a batched env (a task and a seed per
sub-env) until all have ended, asking a policy function for the actions of every step; the
samplers (training and evaluation rollouts) and the oracle's evaluation use it.

:class:`VectorSampler` serves M tasks x K episodes from one batched environment: one policy
forward per time step serves every sub-environment (per-task parameters carry a leading task
dimension), and the environment steps all M*K sub-environments at once. Actions are drawn
from pre-drawn per-task noise by the policy's distribution (``policy.distribution``,
:mod:`maml_rl.distributions`: Gaussian noise for a ``Box``, Gumbel noise and Gumbel-max for a
``Discrete``). The sampler is an
interface (:class:`Sampler`); :func:`maml_rl.sampler.make_sampler` builds the back-end a config
names (this one, or Ray workers: :mod:`maml_rl.ray_sampler`), both giving the same batches.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol

import gymnasium as gym
import numpy as np
import torch

from maml_rl.batch import EpisodeBatch, episode_batch
from maml_rl.distributions import gaussian_noise, gumbel_noise
from maml_rl.errors import NonFiniteRolloutError, UserEnvError
from maml_rl.family import (
    PASSED_ON,
    ActionMapping,
    TaskFamily,
    env_name,
    reset_with_tasks,
    user_code_failed,
    wrong_sub_env_observation,
)
from maml_rl.policy import MLPPolicy, Params, is_task_batched
from maml_rl.rollout_thread import Progress, on_rollout_thread
from maml_rl.seeding import episode_seeds, task_seeds
from maml_rl.settings import SamplerSettings


class Sampler(Protocol):
    """Anything that turns (tasks, per-task policy parameters, K, seed) into an episode batch."""

    def sample(
        self, tasks: Sequence[Any], params: Params, episodes_per_task: int, seed: int
    ) -> EpisodeBatch: ...

    def close(self) -> None: ...


class Episodes(NamedTuple):
    """What :func:`run_episodes` recorded for n sub-envs over the T steps it ran (time-major).

    ``observations`` and ``actions`` (the policy's, before the action mapping) are zero and
    ``rewards`` are zero at padded steps (after an episode ended), ``mask`` is 1 at valid steps.
    ``rewards`` are float64, as the env returned them. ``actions`` have the action mapping's
    shape and dtype: ``[T, n, act_dim]`` float32 (Box) or ``[T, n]`` int64 indices (Discrete).
    ``success`` ``[T, n]`` float32 is ``info["success"]`` of each step when the env's info
    has it (0 at padded steps), else None.
    """

    observations: np.ndarray  # [T, n, obs_dim] float32
    actions: np.ndarray  # [T, n, act_dim] float32, or [T, n] int64
    rewards: np.ndarray  # [T, n] float64
    mask: np.ndarray  # [T, n] float32
    success: np.ndarray | None = None  # [T, n] float32, or None


class NonFiniteActions(NonFiniteRolloutError):
    """The policy's actions are not finite although its observations are (raised by
    :func:`run_episodes`, which cannot see the parameters; :class:`VectorSampler` tells
    whether they are the reason)."""

    def __init__(self, sub_env: int, step: int) -> None:
        self.sub_env, self.step = sub_env, step
        super().__init__(
            f"the policy's actions are not finite for finite observations (sub-env {sub_env}, "
            f"step {step})"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.sub_env, self.step)


def wrong_observations(
    env: gym.vector.VectorEnv, obs: Any, method: str, at: str = ""
) -> UserEnvError:
    """A batched env's ``method`` returned observations of another shape than
    ``[num_envs, *single_observation_space.shape]``."""
    declared = tuple(env.single_observation_space.shape)
    return UserEnvError(
        f"env {env_name(env)}: {method} returned observations of shape {np.shape(obs)}{at}; its "
        f"observation_space declares {declared} per sub-env ({env.num_envs} sub-envs)"
    )


def step_failed(
    env: gym.vector.VectorEnv, t: int, observations: np.ndarray, actions: np.ndarray, err: Exception
) -> Exception:
    """Why ``env.step(actions)`` raised ``err`` at step t (called only then: not a hot path).

    A sub-env of the fallback returned an observation of the wrong shape; or the actions are not
    finite, because the observations ``[t + 1, n, obs_dim]`` the policy saw are not (the env's
    fault) or else (:class:`NonFiniteActions`) the policy's; or the env's code failed."""
    if isinstance(env, gym.vector.SyncVectorEnv):
        wrong = wrong_sub_env_observation(env, "step()", f", step {t}")
        if wrong is not None:
            return wrong
    if actions.dtype.kind == "f" and not np.isfinite(actions).all():
        bad = ~np.isfinite(observations.reshape(t + 1, len(actions), -1)).all(axis=-1)
        if bad.any():
            s, i = (int(x) for x in np.argwhere(bad)[0])  # the earliest
            method, when = (
                ("reset()", "before the first step") if s == 0 else ("step()", f"step {s - 1}")
            )
            return NonFiniteRolloutError(
                f"env {env_name(env)}: {method} returned non-finite observations "
                f"(sub-env {i}, {when})"
            )
        i = int(np.flatnonzero(~np.isfinite(actions.reshape(len(actions), -1)).all(axis=-1))[0])
        return NonFiniteActions(i, t)
    return user_code_failed(env_name(env), "step()", err)


def run_episodes(
    env: gym.vector.VectorEnv,
    tasks: list[Any],
    seeds: list[int],
    horizon: int,
    act: Callable[[int, np.ndarray], np.ndarray],
    to_env: ActionMapping,
    tick: Callable[[], None] | None = None,
) -> Episodes:
    """One episode per sub-env of ``env``, sub-env i set to ``tasks[i]`` and reset with
    ``seeds[i]``, for at most ``horizon`` steps or until every episode has ended.

    ``act(t, observations)`` gets the float32 observations ``[n, obs_dim]`` of step t and
    returns the policy's actions, ``[n, *to_env.shape]`` (``[n, act_dim]`` for a Box, ``[n]``
    indices for a Discrete); ``to_env`` maps them onto the env's action space. Steps after an
    episode ended hold zeros, so a sub-env's rows do not depend on how long the others ran.
    ``tick()``, if given, is called once per time step (the rollout thread's progress, which
    may raise to cancel the rollout).

    A misbehaving env is one line: its ``reset``/``step`` raising, or returning observations of
    another shape than its observation space, a :class:`~maml_rl.errors.UserEnvError`; a
    ``step`` failing on non-finite actions a :class:`~maml_rl.errors.NonFiniteRolloutError`
    saying whether the env's observations were not finite (see :func:`step_failed`).
    """
    n = len(tasks)
    obs_dim = env.single_observation_space.shape[0]
    obs_shape = (n, *env.single_observation_space.shape)
    obs_buf = np.zeros((horizon, n, obs_dim), dtype=np.float32)
    act_buf = np.zeros((horizon, n, *to_env.shape), dtype=to_env.dtype)
    rew_buf = np.zeros((horizon, n), dtype=np.float64)
    mask_buf = np.zeros((horizon, n), dtype=np.float32)
    success_buf: np.ndarray | None = None  # allocated when the env reports info["success"]
    finished = np.zeros(n, dtype=bool)
    obs = reset_with_tasks(env, tasks, seeds)
    if getattr(obs, "shape", None) != obs_shape:
        raise wrong_observations(env, obs, "reset()")
    steps = horizon
    for t in range(horizon):
        if tick is not None:
            tick()
        obs_buf[t] = obs
        mask_buf[t] = ~finished
        act_buf[t] = act(t, obs_buf[t])
        try:
            obs, reward, terminated, truncated, info = env.step(to_env(act_buf[t]))
        except PASSED_ON:
            raise
        except Exception as err:
            raise step_failed(env, t, obs_buf[: t + 1], act_buf[t], err) from err
        if getattr(obs, "shape", None) != obs_shape:  # a tuple compare, ~0.1 us
            raise wrong_observations(env, obs, "step()", f" at step {t}")
        rew_buf[t] = np.where(finished, 0.0, reward)
        if "success" in info:  # a dict lookup per step for the other families
            if success_buf is None:
                success_buf = np.zeros((horizon, n), dtype=np.float32)
            success_buf[t] = np.where(finished, 0.0, info["success"])
        finished |= np.asarray(terminated) | np.asarray(truncated)
        if finished.all():
            steps = t + 1
            break
    padded = mask_buf[:steps] == 0
    obs_buf[:steps][padded] = 0.0
    act_buf[:steps][padded] = 0
    success = None if success_buf is None else success_buf[:steps]
    return Episodes(obs_buf[:steps], act_buf[:steps], rew_buf[:steps], mask_buf[:steps], success)


class VectorSampler:
    """Samples with one batched env of M*K sub-envs; sub-env m*K + k runs episode k of task m.

    Args:
        family: the resolved task family (env id, kwargs, horizon H, action mapping: for a Box
            the policy acts in [-1, 1]^d mapped onto the Box with ``normalize_actions``, else
            clipped; for a Discrete its indices are shifted by the space's ``start``).
        policy: the policy architecture (:class:`~maml_rl.policy.GaussianMLPPolicy` for a Box,
            :class:`~maml_rl.policy.CategoricalMLPPolicy` for a Discrete); its ``distribution``
            draws the actions from the noise; parameters come with every :meth:`sample` call.
        num_threads: physics threads of the batched env (None: the env's default).
    """

    def __init__(
        self, family: TaskFamily, policy: MLPPolicy, num_threads: int | None = None
    ) -> None:
        self.family = family
        self.policy = policy
        self.num_threads = num_threads
        self.horizon = family.horizon
        self._envs: dict[int, gym.vector.VectorEnv] = {}

    def _env(self, num_envs: int) -> gym.vector.VectorEnv:
        """The batched env of ``num_envs`` sub-envs, kept for the next call of that size; for a
        family with a ``max_sub_envs`` limit at most the two latest sizes are kept (the parts of
        :func:`task_parts`), so it holds at most twice the limit."""
        if num_envs not in self._envs:
            if self.family.max_sub_envs is not None:
                for size in list(self._envs)[:-1]:  # keep the latest other size only
                    self._envs.pop(size).close()
            self._envs[num_envs] = self.family.make_batched_env(num_envs, self.num_threads)
        return self._envs[num_envs]

    def sample(
        self, tasks: Sequence[Any], params: Params, episodes_per_task: int, seed: int
    ) -> EpisodeBatch:
        """Run K = ``episodes_per_task`` episodes of each task until all have ended.

        ``params`` are the policy parameters, unbatched (one policy for all tasks) or with a
        leading task dimension of size M = len(tasks). Task m's randomness (its sub-envs'
        initial states and its action noise) comes from ``task_seeds(seed, M)[m]`` alone.

        Box actions are Gaussian samples a = mu + sigma * eps, clipped to the action space (or
        mapped onto it, see ``normalize_actions``) when sent to the env; the batch stores the
        unclipped samples ``[T, M, K, act_dim]`` (float32). Discrete actions are categorical
        samples by the Gumbel-max trick, a = argmax_b (z_b + g_b) with z the logits and
        g_b = -log(-log u_b), u_b ~ U(0, 1), which is distributed as softmax(z); the batch
        stores the indices a ``[T, M, K]`` (int64), the env gets a + ``action_space.start``.
        Either way the noise (eps ``[T, K, act_dim]`` or u ``[T, K, n]``) of task m is drawn
        up front from one generator seeded with its task seed.
        """
        return self.sample_shard(tasks, params, episodes_per_task, task_seeds(seed, len(tasks)))

    def sample_shard(
        self,
        tasks: Sequence[Any],
        params: Params,
        episodes_per_task: int,
        seeds: Sequence[int],
        shard: Sequence[int] | None = None,
    ) -> EpisodeBatch:
        """Sample only the tasks with indices ``shard`` (default: all) of a meta-batch.

        ``tasks``, ``params`` and ``seeds`` describe the whole meta-batch of M tasks; the
        returned batch holds the ``shard`` tasks in that order. The policy forward always runs
        over all M task slots (rows of tasks outside the shard are zeros), so every task's
        actions are bit-identical whichever shard it is sampled in: BLAS kernels may round
        differently for other batch shapes, and the physics would amplify that. A family with a
        ``max_sub_envs`` limit (Meta-World) has the shard sampled in contiguous parts of at most
        that many sub-envs (:func:`task_parts`), assembled into the same batch (:func:`assemble`).
        """
        k = int(episodes_per_task)
        rows = shard_rows(len(tasks), params, k, seeds, shard)
        parts = task_parts(rows, k, self.family.max_sub_envs)
        if len(parts) == 1:
            return self._sample_rows(tasks, params, k, seeds, rows)
        batches = [self._sample_rows(tasks, params, k, seeds, part) for part in parts]
        return assemble([shard_arrays(b) for b in batches])

    def _sample_rows(
        self,
        tasks: Sequence[Any],
        params: Params,
        k: int,
        seeds: Sequence[int],
        rows: list[int],
    ) -> EpisodeBatch:
        """The episodes of the tasks ``rows`` in one batched env of ``len(rows) * k`` sub-envs."""
        env = self._env(len(rows) * k)
        to_env = self.family.action_mapping(env.single_action_space)
        cpu_params = {
            name: p.detach().to("cpu", torch.float32).clone() for name, p in params.items()
        }
        obs_dim = env.single_observation_space.shape[0]
        act = self._actor(cpu_params, len(tasks), rows, k, seeds, obs_dim, to_env.shape)
        sub_env_tasks = [tasks[i] for i in rows for _ in range(k)]
        sub_env_seeds = [x for i in rows for x in episode_seeds(seeds[i], k)]

        def rollout(progress: Progress) -> Episodes:
            return run_episodes(
                env, sub_env_tasks, sub_env_seeds, self.horizon, act, to_env, progress.tick
            )

        try:
            episodes = on_rollout_thread(rollout)
        except NonFiniteActions as err:
            cause = parameters_not_finite(cpu_params, err)
            if cause is None:
                raise
            raise cause from err
        return shard_batch(episodes, len(rows), k)

    def _actor(
        self,
        params: Params,
        num_tasks: int,
        rows: list[int],
        k: int,
        seeds: Sequence[int],
        obs_dim: int,
        action_shape: tuple[int, ...],
    ) -> Callable[[int, np.ndarray], np.ndarray]:
        """``act(t, observations)`` for :func:`run_episodes`: the shard's observations
        ``[m * K, obs_dim]`` placed in their rows of all M task slots, one policy forward, the
        shard's rows of its output, and the distribution's draw from step t of the noise drawn
        up front, one generator per task (``[T, m, K, ...]``)."""
        distribution = self.policy.distribution
        m, n = len(rows), len(rows) * k
        full = m == num_tasks and rows == sorted(rows)
        slots = torch.zeros(num_tasks, k, obs_dim)
        index = torch.tensor(rows)
        noise = torch.stack(
            [distribution.noise(self.horizon, k, int(seeds[i])) for i in rows], dim=1
        )

        def act(t: int, obs: np.ndarray) -> np.ndarray:
            current = torch.from_numpy(obs).view(m, k, obs_dim)
            if full:
                slots.copy_(current)
            else:
                slots[index] = current
            output = self.policy(slots, params)
            if not full:
                output = distribution.take_tasks(output, index)
            return (
                distribution.sample_from_noise(output, noise[t]).reshape(n, *action_shape).numpy()
            )

        return act

    def close(self) -> None:
        for env in self._envs.values():
            env.close()
        self._envs.clear()


def make_sampler(family: TaskFamily, policy: MLPPolicy, settings: SamplerSettings) -> Sampler:
    """The sampling back-end ``settings.sampler`` names, for the family and policy (training,
    evaluation and the API's adaptation all sample through it):
    :class:`~maml_rl.sampler.VectorSampler` (``vector``, this process) or
    :class:`~maml_rl.ray_sampler.RaySampler` (``ray``); both give the same batches."""
    if settings.sampler == "ray":
        from maml_rl.ray_sampler import RaySampler

        return RaySampler(
            family,
            policy,
            settings.num_threads,
            num_workers=settings.num_workers,
            address=settings.ray_address,
            max_retries=settings.ray_max_retries,
            timeout_s=settings.ray_timeout_s,
        )
    return VectorSampler(family, policy, settings.num_threads)


def shard_rows(
    num_tasks: int,
    params: Params,
    episodes_per_task: int,
    seeds: Sequence[int],
    shard: Sequence[int] | None,
) -> list[int]:
    """The task indices of ``shard`` (default: all ``num_tasks``), after checking that there
    is a task and an episode, a seed per task, a parameter set per task (if task-batched) and
    that the shard is a non-empty subset of the tasks (one-line ValueErrors)."""
    if num_tasks == 0 or episodes_per_task <= 0:
        raise ValueError(
            f"need at least one task and one episode, got {num_tasks} and {episodes_per_task}"
        )
    if len(seeds) != num_tasks:
        raise ValueError(f"got {len(seeds)} task seeds for {num_tasks} tasks")
    if is_task_batched(params) and params["layers.0.weight"].shape[0] != num_tasks:
        raise ValueError(
            f"params carry {params['layers.0.weight'].shape[0]} task sets for {num_tasks} tasks"
        )
    rows = list(range(num_tasks)) if shard is None else [int(i) for i in shard]
    if not rows or min(rows) < 0 or max(rows) >= num_tasks:
        raise ValueError(f"shard {rows} is empty or outside the {num_tasks} tasks")
    return rows


def task_parts(
    rows: Sequence[int], episodes_per_task: int, max_sub_envs: int | None
) -> list[list[int]]:
    """``rows`` (task indices) in as few contiguous parts of at most ``max_sub_envs //
    episodes_per_task`` tasks each (at least one) as the limit allows, their sizes within one
    task of each other (so a sampler builds at most two env sizes); one part when there is no
    limit or the batch fits."""
    rows = list(rows)
    if max_sub_envs is None or len(rows) * episodes_per_task <= max_sub_envs:
        return [rows]
    size = max(1, max_sub_envs // max(1, episodes_per_task))
    count = -(-len(rows) // size)  # as few parts as the limit allows, sizes within one task
    return [[int(i) for i in part] for part in np.array_split(rows, count)]


ShardArrays = tuple[np.ndarray, ...]
"""A shard's observations, actions, rewards, mask (numpy) and, when the env reports
``info["success"]``, its per-step success flags."""


def shard_arrays(batch: EpisodeBatch) -> ShardArrays:
    """The arrays of a shard's batch that :func:`assemble` concatenates."""
    success = () if batch.success is None else (batch.success.numpy(),)
    return (*(x.numpy() for x in batch[:4]), *success)


def assemble(shards: Sequence[ShardArrays]) -> EpisodeBatch:
    """Concatenate shards' ``(observations, actions, rewards, mask)`` along the task axis into
    the batch of the whole meta-batch: zero-padded in time to the longest shard first, and
    episode returns and lengths computed on the whole batch as one sampler call does (a sum
    over a differently shaped tensor may round differently)."""
    steps = max(s[0].shape[0] for s in shards)

    def pad(x: np.ndarray) -> np.ndarray:
        if x.shape[0] == steps:
            return x
        return np.pad(x, [(0, steps - x.shape[0])] + [(0, 0)] * (x.ndim - 1))

    observations, actions, rewards, mask, *success = (
        torch.from_numpy(np.concatenate([pad(s[i]) for s in shards], axis=1))
        for i in range(min(len(s) for s in shards))
    )
    return episode_batch(observations, actions, rewards, mask, *success)


def parameters_not_finite(params: Params, err: NonFiniteActions) -> NonFiniteRolloutError | None:
    """The error to raise for non-finite actions when the policy's parameters are not finite
    either (naming them), else None (the actions' own error stands)."""
    bad = [name for name, p in params.items() if not bool(torch.isfinite(p).all())]
    if not bad:
        return None
    return NonFiniteRolloutError(
        f"the policy's parameters are not finite ({', '.join(bad)}: NaN or "
        f"infinite values), nor are its actions (sub-env {err.sub_env}, step "
        f"{err.step})"
    )


def shard_batch(episodes: Episodes, num_tasks: int, episodes_per_task: int) -> EpisodeBatch:
    """The episode batch ``[T, m, K, ...]`` of :func:`run_episodes`' time-major records of
    m * K sub-envs (sub-env i * K + k: episode k of task i), rewards cast to float32."""
    steps = episodes.mask.shape[0]

    def to_tensor(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(x).reshape(steps, num_tasks, episodes_per_task, *x.shape[2:])

    return episode_batch(
        to_tensor(episodes.observations),
        to_tensor(episodes.actions),
        to_tensor(episodes.rewards.astype(np.float32)),
        to_tensor(episodes.mask),
        None if episodes.success is None else to_tensor(episodes.success),
    )


__all__ = [
    "Episodes",
    "NonFiniteActions",
    "Sampler",
    "ShardArrays",
    "VectorSampler",
    "assemble",
    "gaussian_noise",
    "gumbel_noise",
    "make_sampler",
    "run_episodes",
    "step_failed",
    "task_parts",
    "wrong_observations",
]
