"""The task protocol shared by every task family, single and batched.

A *task family* is an environment whose reward (or dynamics) depends on a task drawn from a
distribution p(T), as in MAML (Finn, Abbeel, Levine, ICML 2017, section 5.3). The protocol the
``maml_rl`` sampler relies on:

* a task is a small frozen dataclass with ``as_array()`` (see :mod:`maml_envs.tasks`);
* ``env.unwrapped.sample_tasks(n, rng)`` draws ``n`` tasks from a ``numpy.random.Generator``;
* ``env.unwrapped.reset_task(task)`` sets the task (kept across ``reset()`` calls), as do
  ``reset(options={"task": task})`` and the constructor argument ``task=``;
* ``env.unwrapped.task`` is the current task (``task_space.default`` until one is set).

A :class:`TaskSpace` describes the distribution and validates tasks; :class:`TaskFamilyEnv`
(single env mixin) and :class:`TaskFamilyVectorEnv` (batched base class) implement the rest.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv


class Task(Protocol):
    """What a task must offer: hashable, picklable, and a float-vector view."""

    def as_array(self) -> np.ndarray: ...


T = TypeVar("T")


class TaskSpace(ABC, Generic[T]):
    """A distribution over tasks of one type, with validation.

    Subclasses set ``task_type`` and implement :meth:`sample`, :meth:`_check_value` and
    :attr:`default`.
    """

    task_type: ClassVar[type]

    @abstractmethod
    def sample(self, n: int, rng: np.random.Generator) -> list[T]:
        """Draw ``n`` tasks with ``rng`` (vectorised, deterministic given ``rng``)."""

    @property
    @abstractmethod
    def default(self) -> T:
        """The task an environment has before one is set."""

    @abstractmethod
    def _check_value(self, task: T) -> None:
        """Raise ValueError if ``task`` (of the right type) lies outside the family."""

    def validate(self, task: Any) -> T:
        """Return ``task`` if it belongs to this family; raise TypeError/ValueError otherwise."""
        if not isinstance(task, self.task_type):
            raise TypeError(
                f"expected a {self.task_type.__name__} task for {type(self).__name__}, "
                f"got {task!r} of type {type(task).__name__}"
            )
        self._check_value(task)
        return task

    @property
    def task_dim(self) -> int:
        """Length of ``task.as_array()``."""
        return int(np.asarray(self.default.as_array()).shape[0])  # type: ignore[attr-defined]


class SplitTaskSpace(TaskSpace[T]):
    """A benchmark's task space: a fixed split into training tasks and held-out test tasks,
    which depends on a seed (e.g. Meta-World's ML benchmarks, :mod:`maml_envs.meta_world`).

    ``maml_rl`` draws a run's training tasks with ``sample_split("train", n, rng, seed)`` and its
    test tasks with ``sample_split("test", n, rng, seed)``, ``seed`` being the run's seed;
    :meth:`sample` (what ``sample_tasks`` uses) draws training tasks of a default split.
    """

    @abstractmethod
    def sample_split(self, split: str, n: int, rng: np.random.Generator, seed: int) -> list[T]:
        """Draw ``n`` tasks of ``split`` (``train`` or ``test``) of the benchmark built with
        ``seed``, with ``rng``."""


def check_num_tasks(n: Any) -> int:
    """Validate the ``n`` argument of ``sample_tasks``."""
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 0:
        raise ValueError(f"number of tasks must be a non-negative int, got {n!r}")
    return int(n)


def check_rng(rng: Any) -> np.random.Generator:
    """Validate the ``rng`` argument of ``sample_tasks``."""
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    return rng


def check_actions(actions: Any, shape: tuple[int, ...]) -> np.ndarray:
    """Return ``actions`` as a float64 array of ``shape``; raise ValueError if it is not finite."""
    array = np.asarray(actions, dtype=np.float64)
    if array.shape != shape:
        raise ValueError(f"action has shape {array.shape}, expected {shape}")
    if not np.isfinite(array).all():
        raise ValueError("action contains non-finite values (nan or inf)")
    return array


def check_discrete_actions(actions: Any, shape: tuple[int, ...], num_actions: int) -> np.ndarray:
    """Return ``actions`` as an int64 array of ``shape``; raise ValueError unless every entry
    is an integer (integer dtype, as ``gymnasium.spaces.Discrete`` requires) in
    [0, num_actions)."""
    array = np.asarray(actions)
    if array.shape != shape:
        raise ValueError(f"action has shape {array.shape}, expected {shape}")
    if array.dtype.kind not in "iu":
        raise ValueError(f"discrete actions must have an integer dtype, got {array.dtype}")
    if array.size and (array.min() < 0 or array.max() >= num_actions):
        bad = array[(array < 0) | (array >= num_actions)].ravel()[0]
        raise ValueError(f"action {bad} outside the {num_actions} actions [0, {num_actions - 1}]")
    return array.astype(np.int64)


class _SamplesTasks:
    """``sample_tasks`` for single and batched envs alike (both hold a ``task_space``)."""

    task_space: TaskSpace[Any]

    def sample_tasks(self, n: int, rng: np.random.Generator) -> list[Any]:
        """Draw ``n`` tasks from this family's distribution with ``rng``."""
        return self.task_space.sample(check_num_tasks(n), check_rng(rng))


class TaskFamilyEnv(_SamplesTasks):
    """Mixin giving a single Gymnasium env the task protocol.

    Put it first in the bases (``class MyEnv(TaskFamilyEnv, gymnasium.Env)``), call
    :meth:`_init_task_family` in ``__init__`` and read the current task from ``self.task`` or
    ``self.task_params`` (``task.as_array()``). ``reset(options={"task": t})`` sets the task
    before delegating to the next ``reset`` in the MRO.
    """

    task_space: TaskSpace[Any]
    _task: Any
    _task_params: np.ndarray

    def _init_task_family(self, task_space: TaskSpace[Any], task: Any = None) -> None:
        self.task_space = task_space
        self.reset_task(task_space.default if task is None else task)

    @property
    def task(self) -> Any:
        """The current task."""
        return self._task

    @property
    def task_params(self) -> np.ndarray:
        """``task.as_array()`` of the current task (float64)."""
        return self._task_params

    def reset_task(self, task: Any) -> None:
        """Set the task; it stays until the next ``reset_task`` or ``options={"task": ...}``."""
        self._task = self.task_space.validate(task)
        self._task_params = np.asarray(task.as_array(), dtype=np.float64)

    def _apply_reset_options(self, options: dict[str, Any] | None) -> None:
        if options and "task" in options:
            self.reset_task(options["task"])

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        """Apply ``options["task"]`` if given, then reset as the base env does."""
        self._apply_reset_options(options)
        return super().reset(seed=seed, options=options)  # type: ignore[misc]


class TaskFamilyVectorEnv(_SamplesTasks, VectorEnv):
    """Base class of the batched task-family envs: one task and one episode per sub-env.

    Semantics (relied upon by the ``maml_rl`` sampler):

    * ``reset(seed=..., options={"tasks": [t_0, ..., t_{N-1}]})`` sets one task per sub-env
      (``options={"task": t}`` sets all); tasks persist across resets.
    * **No autoreset** (``metadata["autoreset_mode"] = AutoresetMode.DISABLED``): each sub-env
      runs exactly one episode per ``reset()``. Once finished (terminated or truncated) its
      action is ignored, it returns its final observation unchanged, reward 0.0, and its
      terminated/truncated flags stay as they were (sticky). ``finished`` is the boolean mask.
    * Truncation at ``max_episode_steps`` (from the registration), as ``TimeLimit`` does:
      ``truncated`` is set on the step whose count reaches it, even if also terminated.
    * ``info`` holds (N,) arrays of the reward terms (0.0 for finished sub-envs).

    * ``reset(seed=[s_0, ..., s_{N-1}])`` gives every sub-env its own generator, so a sub-env's
      initial state depends on its seed only (not on N or its index): batches split over
      several envs or machines reproduce the same episodes. An int seed drives all sub-envs
      from one generator.

    Subclasses implement :meth:`_reset_all` (return the initial observations, drawing
    randomness with :meth:`_draw_per_env`) and :meth:`_step_active` (advance the sub-envs in
    ``active``; return observations, rewards, terminated flags and info for all sub-envs; rows
    of inactive sub-envs are ignored).
    """

    metadata: ClassVar[dict[str, Any]] = {"autoreset_mode": AutoresetMode.DISABLED}

    def _init_task_family(
        self, num_envs: int, task_space: TaskSpace[Any], max_episode_steps: int | None, task: Any
    ) -> None:
        if isinstance(num_envs, bool) or not isinstance(num_envs, int | np.integer):
            raise TypeError(f"num_envs must be an int, got {num_envs!r}")
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        if max_episode_steps is not None and max_episode_steps < 1:
            raise ValueError(f"max_episode_steps must be >= 1 or None, got {max_episode_steps}")
        self.num_envs = int(num_envs)
        self.task_space = task_space
        self.max_episode_steps = max_episode_steps
        self._elapsed = np.zeros(self.num_envs, dtype=np.int64)
        self._terminated = np.zeros(self.num_envs, dtype=bool)
        self._truncated = np.zeros(self.num_envs, dtype=bool)
        self._last_obs: np.ndarray | None = None
        self._last_info: dict[str, Any] = {}
        self.reset_task(task_space.default if task is None else task)

    # --- task protocol -------------------------------------------------------------------
    @property
    def tasks(self) -> list[Any]:
        """The current task of each sub-env."""
        return list(self._tasks)

    @property
    def task_params(self) -> np.ndarray:
        """(N, task_dim) float64 array stacking ``task.as_array()`` of each sub-env."""
        return self._task_params

    def reset_task(self, task: Any) -> None:
        """Give every sub-env the same ``task``."""
        self.reset_tasks([task] * self.num_envs)

    def reset_tasks(self, tasks: Any) -> None:
        """Give sub-env i the task ``tasks[i]``; ``len(tasks)`` must equal ``num_envs``."""
        tasks = list(tasks)
        if len(tasks) != self.num_envs:
            raise ValueError(f"got {len(tasks)} tasks for {self.num_envs} sub-environments")
        tasks = [self.task_space.validate(t) for t in tasks]
        self._tasks = tasks
        self._task_params = np.stack([np.asarray(t.as_array(), dtype=np.float64) for t in tasks])

    # --- episode bookkeeping ---------------------------------------------------------------
    @property
    def finished(self) -> np.ndarray:
        """(N,) bool: sub-envs whose episode has ended (terminated or truncated)."""
        return self._terminated | self._truncated

    @property
    def elapsed_steps(self) -> np.ndarray:
        """(N,) int: steps taken by each sub-env in its current episode."""
        return self._elapsed.copy()

    def reset(
        self, *, seed: int | list[int] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start one new episode in every sub-env; ``options`` may carry "tasks" or "task".

        ``seed`` is None, an int (one generator for all sub-envs) or a list of N ints (one
        generator per sub-env).
        """
        self._sub_env_rngs: list[np.random.Generator] | None = None
        if isinstance(seed, list | tuple | np.ndarray):
            seeds = [int(s) for s in seed]
            if len(seeds) != self.num_envs:
                raise ValueError(f"got {len(seeds)} seeds for {self.num_envs} sub-environments")
            self._sub_env_rngs = [np.random.default_rng(s) for s in seeds]
            super().reset(seed=seeds[0])
        else:
            super().reset(seed=seed)
        if options:
            if "tasks" in options and "task" in options:
                raise ValueError('give either options["tasks"] or options["task"], not both')
            if "tasks" in options:
                self.reset_tasks(options["tasks"])
            elif "task" in options:
                self.reset_task(options["task"])
        self._elapsed[:] = 0
        self._terminated[:] = False
        self._truncated[:] = False
        obs = self._reset_all()
        self._last_obs = obs.copy()
        return obs, {}

    def step(
        self, actions: Any
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Advance the unfinished sub-envs by one step (see the class docstring)."""
        if self._last_obs is None:
            raise RuntimeError("call reset() before step()")
        actions = self._check_actions(actions)
        active = ~(self._terminated | self._truncated)
        if not active.any():
            info = {key: np.zeros_like(value) for key, value in self._last_info.items()}
            return (
                self._last_obs.copy(),
                np.zeros(self.num_envs),
                self._terminated.copy(),
                self._truncated.copy(),
                info,
            )
        obs, rewards, terminated, info = self._step_active(actions, active)
        all_active = bool(active.all())
        if not all_active:
            inactive = ~active
            obs[inactive] = self._last_obs[inactive]
            rewards[inactive] = 0.0
            for value in info.values():
                if isinstance(value, np.ndarray) and value.shape[:1] == (self.num_envs,):
                    value[inactive] = 0
        self._elapsed += active
        self._terminated |= active & terminated
        if self.max_episode_steps is not None:
            self._truncated |= active & (self._elapsed >= self.max_episode_steps)
        self._last_obs = obs
        self._last_info = info
        return obs.copy(), rewards, self._terminated.copy(), self._truncated.copy(), info

    def _check_actions(self, actions: Any) -> np.ndarray:
        """Validate the (N, ...) actions of :meth:`step`: float64 and finite by default;
        families with discrete actions override it (:func:`check_discrete_actions`)."""
        return check_actions(actions, self.action_space.shape)

    def _draw_per_env(
        self,
        draw: Callable[[np.random.Generator, tuple[int, ...]], np.ndarray],
        shape: tuple[int, ...],
    ) -> np.ndarray:
        """``(N, *shape)`` random draws: ``draw(rng, size)`` from ``self.np_random`` for all
        sub-envs at once, or row by row from the per-sub-env generators of a list seed."""
        rngs = getattr(self, "_sub_env_rngs", None)
        if rngs is None:
            return draw(self.np_random, (self.num_envs, *shape))
        return np.stack([draw(rng, shape) for rng in rngs])

    def _draw_active(
        self,
        draw: Callable[[np.random.Generator, tuple[int, ...]], np.ndarray],
        active: np.ndarray,
    ) -> np.ndarray:
        """(N,) float64 random draws during a step, 0.0 for sub-envs not in ``active``.

        Only the sub-envs that step consume randomness: with a list seed each draws
        ``draw(rng_i, ())`` from its own generator, exactly as a single env reset with that seed
        draws ``draw(np_random, ())`` on the same step (so stochastic rewards and transitions
        match single envs step for step); otherwise ``draw(np_random, (n_active,))`` serves all.
        """
        out = np.zeros(self.num_envs, dtype=np.float64)
        rngs = getattr(self, "_sub_env_rngs", None)
        if rngs is None:
            out[active] = draw(self.np_random, (int(active.sum()),))
        else:
            for i in np.flatnonzero(active):
                out[i] = draw(rngs[i], ())
        return out

    @abstractmethod
    def _reset_all(self) -> np.ndarray:
        """Reset every sub-env's state; return the (N, obs_dim) initial observations."""

    @abstractmethod
    def _step_active(
        self, actions: np.ndarray, active: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Advance sub-envs where ``active``; return (obs, rewards, terminated, info) for all."""
