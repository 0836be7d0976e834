"""Vectorised multi-task sampling: M tasks x K episodes in one batched environment.

One policy forward per time step serves every sub-environment (per-task parameters carry a
leading task dimension), and the environment steps all M*K sub-environments at once. The
sampler is an interface (:class:`Sampler`) so other back-ends (processes, clusters) can be
added without touching the algorithm.
"""

from __future__ import annotations

import importlib
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

import gymnasium as gym
import numpy as np
import torch

from maml_rl.batch import EpisodeBatch
from maml_rl.policy import GaussianMLPPolicy, Params


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run torch single-threaded inside the block. The per-step policy forward is small, and
    torch's OpenMP workers spin-waiting between steps steal the cores the batched physics
    threads need (measured: sampling 3.3x slower on 2 cores with torch's default threads)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class Sampler(Protocol):
    """Anything that turns (tasks, per-task policy parameters, K, seed) into an episode batch."""

    def sample(
        self, tasks: Sequence[Any], params: Params, episodes_per_task: int, seed: int
    ) -> EpisodeBatch: ...

    def close(self) -> None: ...


class PerformanceWarning(UserWarning):
    """Something works, but much slower than it could (e.g. a family without a batched env)."""


def import_user_module(module: str, what: str) -> None:
    """Import a user's module (one naming a task family), searching the current folder too.

    The ``maml-rl`` console script, unlike ``python -m``, does not put the current folder on
    ``sys.path``; it is appended (after installed packages, so it never hides them) before the
    import. Raises ``ValueError`` naming the module and where it was looked for.
    """
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)
    try:
        importlib.import_module(module)
    except ImportError as err:
        raise ValueError(
            f"cannot import {what} {module!r} ({err}); it must be importable from the current "
            f"folder ({cwd}) or a folder on PYTHONPATH, or be installed"
        ) from err


def registered_families() -> list[str]:
    """Registered Gymnasium ids that are not Gymnasium's own (the built-in task families and
    every one a user registered), sorted."""
    ids = []
    for env_id, spec in gym.registry.items():
        entry = spec.entry_point
        module = entry.split(":")[0] if isinstance(entry, str) else getattr(entry, "__module__", "")
        if not str(module).startswith(("gymnasium.", "shimmy")):
            ids.append(env_id)
    return sorted(ids)


def resolve_env_id(env_id: str) -> str:
    """Import ``module`` for ids written ``module:Id`` (a user's family) and return ``Id``.

    Raises ``ValueError`` naming the id when it is not registered, with Gymnasium's hint (a
    close name, the versions it has) and every registered task family.
    """
    if ":" in env_id:
        module, env_id = env_id.split(":", 1)
        import_user_module(module, f"the module of env id {env_id!r}:")
    if env_id not in gym.registry:
        try:
            gym.spec(env_id)
            hint = ""
        except gym.error.Error as err:
            hint = f" ({str(err).strip()})"
        raise ValueError(
            f"unknown env id {env_id!r}{hint}; registered task families: {registered_families()}"
        )
    return env_id


def make_family_env(env_id: str, env_kwargs: dict[str, Any], **kwargs: Any) -> gym.Env:
    """``gym.make(env_id, **env_kwargs, **kwargs)``; a keyword the env does not take is a
    ``ConfigError`` naming it (``env_kwargs`` come from the user's config)."""
    from maml_rl.config import ConfigError

    try:
        return gym.make(env_id, **env_kwargs, **kwargs)
    except TypeError as err:
        if "keyword argument" not in str(err):
            raise
        raise ConfigError(f"bad env_kwargs {env_kwargs} for {env_id}: {err}") from None


def unnormalize_actions(u: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """rllab's ``normalize``: a = low + (clip(u, -1, 1) + 1) (high - low) / 2 (exactly
    clip(u, -1, 1) when the bounds already are [-1, 1], without rounding)."""
    clipped = np.clip(u, -1.0, 1.0)
    if np.all(low == -1.0) and np.all(high == 1.0):
        return clipped
    return low + (clipped + 1.0) * (0.5 * (high - low))


def task_seeds(seed: int, num_tasks: int) -> list[int]:
    """Per-task seeds derived from a batch seed: task m's episodes depend on (seed, m) only, so
    any split of the tasks over samplers or workers reproduces the same batch."""
    states = np.random.SeedSequence(int(seed)).spawn(num_tasks)
    return [int(s.generate_state(1)[0]) for s in states]


def make_batched_env(
    env_id: str, num_envs: int, env_kwargs: dict[str, Any], num_threads: int | None = None
) -> gym.vector.VectorEnv:
    """The family's native batched env when registered with a ``vector_entry_point`` (no
    autoreset: each sub-env runs one episode per reset), else a synchronous vector env (with a
    :class:`PerformanceWarning`, shown once per env id)."""
    spec = gym.spec(env_id)
    if spec.vector_entry_point is not None:
        kwargs = dict(env_kwargs)
        if num_threads is not None:
            kwargs["num_threads"] = num_threads
        return gym.make_vec(
            env_id, num_envs=num_envs, vectorization_mode="vector_entry_point", **kwargs
        )
    warnings.warn(
        f"{env_id} has no batched version (vector_entry_point): its sub-environments are stepped "
        "one at a time by Gymnasium's SyncVectorEnv, typically 10-20x slower; the README's "
        "'Your own task family' shows how to write one",
        PerformanceWarning,
        stacklevel=2,
    )
    return gym.make_vec(
        env_id,
        num_envs=num_envs,
        vectorization_mode="sync",
        vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.NEXT_STEP},
        **env_kwargs,
    )


class VectorSampler:
    """Samples with one batched env of M*K sub-envs; sub-env m*K + k runs episode k of task m.

    Args:
        env_id: registered Gymnasium id of a task family (``module:Id`` imports ``module``).
        policy: the policy architecture; parameters come with every :meth:`sample` call.
        env_kwargs: keyword arguments for the environment.
        num_threads: physics threads of the batched env (None: the env's default).
        max_episode_steps: horizon H; defaults to the registered ``max_episode_steps``.
        normalize_actions: the policy acts in [-1, 1]^d, mapped affinely onto the env's Box
            [low, high] after clipping (rllab's ``normalize`` wrapper, which the authors' scripts
            put around every env): a = low + (clip(u, -1, 1) + 1) (high - low) / 2. Without it
            the policy's actions are clipped to [low, high] and sent as they are. Identity for
            action spaces that already are [-1, 1] (the MuJoCo families).
    """

    def __init__(
        self,
        env_id: str,
        policy: GaussianMLPPolicy,
        env_kwargs: dict[str, Any] | None = None,
        num_threads: int | None = None,
        max_episode_steps: int | None = None,
        normalize_actions: bool = False,
    ) -> None:
        self.env_id = resolve_env_id(env_id)
        self.policy = policy
        self.env_kwargs = dict(env_kwargs or {})
        self.num_threads = num_threads
        horizon = max_episode_steps or gym.spec(self.env_id).max_episode_steps
        if not horizon or horizon <= 0:
            raise ValueError(f"{self.env_id} has no max_episode_steps; set max_episode_steps")
        self.horizon = int(horizon)
        self.normalize_actions = bool(normalize_actions)
        self._envs: dict[int, gym.vector.VectorEnv] = {}

    @classmethod
    def from_config(cls, env_id: str, policy: GaussianMLPPolicy, config: Any) -> VectorSampler:
        """The sampler a :class:`~maml_rl.config.TrainConfig` describes, for a resolved id."""
        return cls(
            env_id,
            policy,
            config.env_kwargs,
            config.num_threads,
            config.max_episode_steps,
            config.normalize_actions,
        )

    def _env(self, num_envs: int) -> gym.vector.VectorEnv:
        if num_envs not in self._envs:
            self._envs[num_envs] = make_batched_env(
                self.env_id, num_envs, self.env_kwargs, self.num_threads
            )
        return self._envs[num_envs]

    def _set_tasks(
        self, env: gym.vector.VectorEnv, tasks: list[Any], seeds: list[int]
    ) -> np.ndarray:
        if isinstance(env, gym.vector.SyncVectorEnv):  # generic fallback, not a hot path
            for sub_env, task in zip(env.envs, tasks):
                sub_env.unwrapped.reset_task(task)
            obs, _ = env.reset(seed=seeds)
        else:
            obs, _ = env.reset(seed=seeds, options={"tasks": tasks})
        return obs

    def sample(
        self, tasks: Sequence[Any], params: Params, episodes_per_task: int, seed: int
    ) -> EpisodeBatch:
        """Run K = ``episodes_per_task`` episodes of each task until all have ended.

        ``params`` are the policy parameters, unbatched (one policy for all tasks) or with a
        leading task dimension of size M = len(tasks). Actions are Gaussian samples, clipped to
        the action space (or mapped onto it, see ``normalize_actions``) when sent to the env;
        the batch stores the unclipped samples. Task m's randomness (its sub-envs' initial
        states and its action noise) comes from ``task_seeds(seed, M)[m]`` alone.
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
        differently for other batch shapes, and the physics would amplify that.
        """
        num_tasks, k = len(tasks), int(episodes_per_task)
        if num_tasks == 0 or k <= 0:
            raise ValueError(f"need at least one task and one episode, got {num_tasks} and {k}")
        if len(seeds) != num_tasks:
            raise ValueError(f"got {len(seeds)} task seeds for {num_tasks} tasks")
        if params["log_std"].dim() == 2 and params["log_std"].shape[0] != num_tasks:
            raise ValueError(
                f"params carry {params['log_std'].shape[0]} task sets for {num_tasks} tasks"
            )
        rows = list(range(num_tasks)) if shard is None else [int(i) for i in shard]
        if not rows or min(rows) < 0 or max(rows) >= num_tasks:
            raise ValueError(f"shard {rows} is empty or outside the {num_tasks} tasks")
        full = len(rows) == num_tasks and rows == sorted(rows)
        m = len(rows)
        n = m * k
        env = self._env(n)
        space = env.single_action_space
        low, high = space.low, space.high
        clip = bool(np.isfinite(low).all() and np.isfinite(high).all())
        if self.normalize_actions and not clip:
            raise ValueError(
                f"normalize_actions needs a bounded action space; {self.env_id} has {space}"
            )
        obs_dim = env.single_observation_space.shape[0]
        act_dim = space.shape[0]
        cpu_params = {
            name: p.detach().to("cpu", torch.float32).clone() for name, p in params.items()
        }
        horizon = self.horizon
        # all of an episode's action noise up front, one generator per task: [T, m, K, act]
        noise = torch.stack(
            [
                torch.randn(
                    horizon, k, act_dim, generator=torch.Generator().manual_seed(int(seeds[i]))
                )
                for i in rows
            ],
            dim=1,
        )
        env_seeds = [
            int(x) for i in rows for x in np.random.SeedSequence(int(seeds[i])).generate_state(k)
        ]
        obs_buf = np.zeros((horizon, n, obs_dim), dtype=np.float32)
        act_buf = np.zeros((horizon, n, act_dim), dtype=np.float32)
        rew_buf = np.zeros((horizon, n), dtype=np.float32)
        mask_buf = np.zeros((horizon, n), dtype=np.float32)
        finished = np.zeros(n, dtype=bool)
        slots = torch.zeros(num_tasks, k, obs_dim)
        index = torch.tensor(rows)
        obs = self._set_tasks(env, [tasks[i] for i in rows for _ in range(k)], env_seeds)
        steps = horizon
        with torch.no_grad(), one_torch_thread():
            for t in range(horizon):
                obs_buf[t] = obs
                mask_buf[t] = ~finished
                current = torch.from_numpy(obs_buf[t]).view(m, k, obs_dim)
                if full:
                    slots.copy_(current)
                else:
                    slots[index] = current
                mean, log_std = self.policy(slots, cpu_params)
                if not full:
                    mean = mean[index]
                    log_std = log_std[index] if log_std.dim() == 3 else log_std
                act_buf[t] = (mean + log_std.exp() * noise[t]).reshape(n, act_dim).numpy()
                if self.normalize_actions:
                    sent = unnormalize_actions(act_buf[t], low, high)
                else:
                    sent = np.clip(act_buf[t], low, high) if clip else act_buf[t]
                obs, reward, terminated, truncated, _ = env.step(sent)
                rew_buf[t] = np.where(finished, 0.0, reward)
                finished |= np.asarray(terminated) | np.asarray(truncated)
                if finished.all():
                    steps = t + 1
                    break

        # steps after an episode ended hold zeros, so a task's rows do not depend on how long
        # the other tasks of its batch (or shard) ran
        padded = mask_buf[:steps] == 0
        obs_buf[:steps][padded] = 0.0
        act_buf[:steps][padded] = 0.0

        def to_tensor(x: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(x[:steps]).reshape(steps, m, k, *x.shape[2:])

        mask = to_tensor(mask_buf)
        rewards = to_tensor(rew_buf)
        return EpisodeBatch(
            observations=to_tensor(obs_buf),
            actions=to_tensor(act_buf),
            rewards=rewards,
            mask=mask,
            episode_returns=rewards.sum(0),
            episode_lengths=mask.sum(0).long(),
        )

    def close(self) -> None:
        for env in self._envs.values():
            env.close()
        self._envs.clear()
