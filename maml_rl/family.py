"""The task family of a run, resolved once: env id, kwargs, horizon, action mapping, tasks.

:meth:`TaskFamily.from_config` imports what registers the family (the config's ``env_import``,
the built-in ``maml_envs`` and the module of a ``module:Id`` id), resolves the id and its
horizon H, and is then handed to everything that touches the environment: the samplers (local
and Ray workers, which re-import :attr:`TaskFamily.imports`), evaluation, the comparison
methods, the Python API and videos. A family is a small picklable value; it builds envs on
demand (:meth:`TaskFamily.make_env`, :meth:`TaskFamily.make_batched_env`).

The action mapping (:class:`ActionMapping`) turns the policy's actions into env actions the
same way everywhere: for a ``Box``, with ``normalize_actions`` rllab's ``normalize`` (the
policy's [-1, 1]^d mapped onto the Box), otherwise a clip to the Box's bounds; for a
``Discrete(n, start)``, the categorical policy's index a in {0, ..., n-1} becomes a + start.
"""

from __future__ import annotations

import difflib
import importlib
import os
import re
import warnings
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np

from maml_envs.task_family import SplitTaskSpace, TaskSpace
from maml_rl.authors_tasks import authors_test_tasks
from maml_rl.errors import ConfigError, RunFailure, UserEnvError
from maml_rl.seeding import TASKS, TEST_STREAM, derive_seed
from maml_rl.settings import FamilySettings

BUILT_IN_FAMILIES = "maml_envs"
"""The module whose import registers the built-in task families."""


class PerformanceWarning(UserWarning):
    """Something works, but much slower than it could (e.g. a family without a batched env)."""


def import_user_module(module: str, what: str) -> None:
    """Import a user's module (one naming a task family) from ``sys.path`` as it is (the
    ``maml-rl`` command has added the current folder:
    :func:`maml_rl.cli.add_current_folder_to_path`).
    Raises ``ValueError`` naming the module and where it was looked for."""
    try:
        importlib.import_module(module)
    except ImportError as err:
        raise ValueError(
            f"cannot import {what} {module!r} ({err}); it must be importable from the current "
            f"folder ({os.getcwd()}) or a folder on PYTHONPATH, or be installed"
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


def registered_families_summary(families: list[str]) -> list[str]:
    """``families`` with the per-task ids of one pattern (Meta-World's 50 ML1 ids,
    ``MAML/MetaWorld-ML1-<task>-v0``) folded into one entry with their count."""
    pattern = re.compile(r"^(MAML/MetaWorld-ML1-).+(-v\d+)$")
    folded = [f for f in families if pattern.match(f)]
    rest = [f for f in families if not pattern.match(f)]
    if len(folded) > 1:
        head, tail = pattern.match(folded[0]).groups()  # type: ignore[union-attr]
        rest.append(f"{head}<task>{tail} ({len(folded)} tasks)")
    elif folded:
        rest += folded
    return rest


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
        families = registered_families()
        close = difflib.get_close_matches(env_id, families, n=3, cutoff=0.6)
        nearest = f"did you mean {', '.join(map(repr, close))}? " if close else ""
        raise ValueError(
            f"unknown env id {env_id!r}{hint}; {nearest}a family of your own is registered by "
            "importing its module: write env_id=MODULE:ID (MODULE importable from the current "
            "folder) or set env_import=MODULE; registered task families: "
            f"{registered_families_summary(families)}"
        )
    return env_id


PASSED_ON = (UserEnvError, RunFailure, OSError, ImportError, MemoryError)
"""Exceptions from an env's code that are passed on as they are (already explained, or a
failure of the machine or a missing package), not reported as a misbehaving family."""


def env_name(env: gym.Env | gym.vector.VectorEnv) -> str:
    """The registered id of ``env`` (its spec's), else its class name."""
    spec = getattr(env, "spec", None)
    return str(spec.id) if spec is not None else type(env.unwrapped).__name__


def user_code_failed(env_id: str, what: str, err: BaseException) -> UserEnvError:
    """The :class:`UserEnvError` for the family's ``what`` (e.g. "reset()") having raised
    ``err`` (raise it ``from err``): "env ID: reset() raised ValueError: boom"."""
    message = str(err).strip()
    return UserEnvError(
        f"env {env_id}: {what} raised {type(err).__name__}{': ' * bool(message)}{message}"
    )


def _made(env_id: str, env_kwargs: dict[str, Any], what: str, make: Any) -> Any:
    """``make()`` (a ``gym.make``/``gym.make_vec`` of the family); a keyword the env does not
    take is a ``ConfigError`` naming it, any other failure of the family's constructor a
    :class:`UserEnvError` naming the env and ``what`` was made."""
    try:
        return make()
    except PASSED_ON:
        raise
    except TypeError as err:
        if "keyword argument" in str(err):
            raise ConfigError(f"bad env_kwargs {env_kwargs} for {env_id}: {err}") from None
        # gym.make re-raises the constructor's TypeError with the kwargs appended
        cause = err.__cause__ if isinstance(err.__cause__, TypeError) else err
        raise user_code_failed(env_id, what, cause) from err
    except Exception as err:
        raise user_code_failed(env_id, what, err) from err


def make_family_env(env_id: str, env_kwargs: dict[str, Any], **kwargs: Any) -> gym.Env:
    """``gym.make(env_id, **env_kwargs, **kwargs)``; a keyword the env does not take is a
    ``ConfigError`` naming it (``env_kwargs`` come from the user's config), a constructor that
    raises a :class:`UserEnvError` ("env ID: creating it raised ...")."""
    return _made(
        env_id, env_kwargs, "creating it", lambda: gym.make(env_id, **env_kwargs, **kwargs)
    )


def make_batched_env(
    env_id: str,
    num_envs: int,
    env_kwargs: dict[str, Any],
    num_threads: int | None = None,
    max_episode_steps: int | None = None,
) -> gym.vector.VectorEnv:
    """The family's native batched env when registered with a ``vector_entry_point`` (no
    autoreset: each sub-env runs one episode per reset), else a synchronous vector env (with a
    :class:`PerformanceWarning`, shown once per env id).

    The episodes are truncated at ``max_episode_steps`` when given (the config's horizon),
    else at the registration's ``max_episode_steps`` (``gym.make_vec`` passes it to the
    ``vector_entry_point`` as a keyword; the constructor's own default only applies to an id
    registered without one), as for single envs.
    """
    spec = gym.spec(env_id)
    horizon = {} if max_episode_steps is None else {"max_episode_steps": max_episode_steps}
    if spec.vector_entry_point is not None:
        kwargs = {**env_kwargs, **horizon}
        if num_threads is not None:
            kwargs["num_threads"] = num_threads
        return _made(
            env_id,
            env_kwargs,
            "creating its batched env (vector_entry_point)",
            lambda: gym.make_vec(
                env_id, num_envs=num_envs, vectorization_mode="vector_entry_point", **kwargs
            ),
        )
    warnings.warn(
        f"{env_id} has no batched version (vector_entry_point): its sub-environments are stepped "
        "one at a time by Gymnasium's SyncVectorEnv, typically 10-20x slower; the documentation's "
        "tutorial 'Your own task family' shows how to write one",
        PerformanceWarning,
        stacklevel=2,
    )
    return _made(
        env_id,
        env_kwargs,
        "creating it",
        lambda: gym.make_vec(
            env_id,
            num_envs=num_envs,
            vectorization_mode="sync",
            vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.NEXT_STEP},
            **env_kwargs,
            **horizon,
        ),
    )


def unnormalize_actions(u: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """rllab's ``normalize``: a = low + (clip(u, -1, 1) + 1) (high - low) / 2 (exactly
    clip(u, -1, 1) when the bounds already are [-1, 1], without rounding)."""
    clipped = np.clip(u, -1.0, 1.0)
    if np.all(low == -1.0) and np.all(high == 1.0):
        return clipped
    return low + (clipped + 1.0) * (0.5 * (high - low))


class ActionMapping:
    """Policy actions -> env actions for a ``Box`` or a ``Discrete`` action space.

    ``Box``: with ``normalize_actions``, :func:`unnormalize_actions` (the policy acts in
    [-1, 1]^d; the space must be bounded). Without: clipped to [low, high] when both bounds are
    finite, sent as they are otherwise. The result keeps the input's dtype (no cast).

    ``Discrete(n, start)``: the categorical policy's indices a in {0, ..., n-1} (int64) become
    a + start, as int64; ``normalize_actions`` means nothing there and is ignored.

    :attr:`shape` and :attr:`dtype` describe one policy action (what a rollout buffers per
    sub-env): ``(d,)`` float32 for a Box, ``()`` int64 for a Discrete.
    """

    def __init__(
        self, space: gym.spaces.Box | gym.spaces.Discrete, normalize_actions: bool, env_id: str = ""
    ) -> None:
        self.discrete = isinstance(space, gym.spaces.Discrete)
        if self.discrete:
            self.start = int(space.start)
            self.normalize = self.bounded = False
            self.shape: tuple[int, ...] = ()
            self.dtype = np.dtype(np.int64)
            return
        self.low, self.high = space.low, space.high
        self.normalize = bool(normalize_actions)
        self.bounded = bool(np.isfinite(self.low).all() and np.isfinite(self.high).all())
        self.shape = (int(space.shape[0]),)
        self.dtype = np.dtype(np.float32)
        if self.normalize and not self.bounded:
            raise ValueError(
                f"normalize_actions needs a bounded action space; {env_id or 'the env'} has {space}"
            )

    def __call__(self, u: np.ndarray) -> np.ndarray:
        if self.discrete:
            indices = np.asarray(u, dtype=np.int64)
            return indices + self.start if self.start else indices
        if self.normalize:
            return unnormalize_actions(u, self.low, self.high)
        return np.clip(u, self.low, self.high) if self.bounded else u


def wrong_sub_env_observation(
    env: gym.vector.VectorEnv, method: str, where: str = ""
) -> UserEnvError | None:
    """For the fallback (a ``SyncVectorEnv`` of single envs) whose ``method`` ("reset()",
    "step()") failed: the :class:`UserEnvError` naming the first sub-env whose observation has
    another shape than the single observation space's, or None when all fit. ``where`` (e.g.
    ", step 3") goes after the sub-env."""
    declared = tuple(env.single_observation_space.shape or ())
    for i, obs in enumerate(getattr(env, "_env_obs", None) or ()):
        shape = np.shape(obs)
        if obs is not None and shape != declared:  # None: not reset yet
            return UserEnvError(
                f"env {env_name(env)}: {method} returned an observation of shape {shape} "
                f"(sub-env {i}{where}); its observation_space declares {declared}"
            )
    return None


def reset_with_tasks(env: gym.vector.VectorEnv, tasks: list[Any], seeds: list[int]) -> np.ndarray:
    """Reset a batched env with one task and one seed per sub-env; returns the observations.

    The family's ``reset_task`` or ``reset`` raising is a :class:`UserEnvError` naming the env
    and the method ("env ID: reset() raised ValueError: ..."), the user's exception chained.
    """
    sync = isinstance(env, gym.vector.SyncVectorEnv)
    try:
        if sync:  # generic fallback, not a hot path
            for sub_env, task in zip(env.envs, tasks):
                try:
                    sub_env.unwrapped.reset_task(task)
                except PASSED_ON:
                    raise
                except Exception as err:
                    raise user_code_failed(env_name(env), "reset_task()", err) from err
            obs, _ = env.reset(seed=seeds)
        else:
            obs, _ = env.reset(seed=seeds, options={"tasks": tasks})
    except PASSED_ON:
        raise
    except Exception as err:
        wrong = wrong_sub_env_observation(env, "reset()") if sync else None
        raise (wrong or user_code_failed(env_name(env), "reset()", err)) from err
    return obs


@dataclass(frozen=True)
class FamilyDescription:
    """What one env of a family says about the whole family, read once when it is resolved.

    Attributes:
        observation_space: the family's observation space.
        action_space: the family's action space.
        task_space: the env's ``task_space`` (None when it has none).
        samples_from_task_space: its ``sample_tasks`` is the task space's ``sample`` (every
            :class:`~maml_envs.task_family.TaskFamilyEnv`), so tasks are drawn without an env;
            False for a family with a ``sample_tasks`` of its own.
        render_modes: the env's ``metadata["render_modes"]``.
        plots_paths: the env's ``metadata["trajectory_plot"]`` (default False): observations
            start with the agent's 2D position and a task's ``as_array()`` is its 2D goal, so
            the evaluation draws the paths (``trajectories.png``; 2D navigation).
        max_sub_envs: the env's ``metadata["max_sub_envs"]`` (default None: no limit): the most
            sub-envs a sampler puts in one batched env of the family (memory-heavy envs such
            as Meta-World's); larger batches are sampled in parts, with the same result.
    """

    observation_space: gym.Space
    action_space: gym.Space
    task_space: TaskSpace[Any] | None
    samples_from_task_space: bool
    render_modes: tuple[str, ...]
    plots_paths: bool = False
    max_sub_envs: int | None = None


def _max_sub_envs(env_id: str, value: Any) -> int | None:
    """An env's ``metadata["max_sub_envs"]``: None or a positive int (else one clear line)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserEnvError(
            f"{env_id}: metadata['max_sub_envs'] must be a positive integer (the most "
            f"sub-envs in one batched env), got {value!r}"
        )
    return value


def describe_family(env_id: str, env_kwargs: dict[str, Any]) -> FamilyDescription:
    """Build one env of the family, read its :class:`FamilyDescription`, close it. An env
    without ``sample_tasks(n, rng)`` is not a task family (``ValueError``)."""
    env = make_family_env(env_id, env_kwargs)
    try:
        inner = env.unwrapped
        if not hasattr(inner, "sample_tasks"):
            raise ValueError(f"{env_id} is not a task family: its env has no sample_tasks(n, rng)")
        method = getattr(type(inner), "sample_tasks", None)
        delegates = getattr(method, "__qualname__", "") == "_SamplesTasks.sample_tasks"
        return FamilyDescription(
            inner.observation_space,
            inner.action_space,
            getattr(inner, "task_space", None),
            delegates and hasattr(inner, "task_space"),
            tuple(inner.metadata.get("render_modes", [])),
            bool(inner.metadata.get("trajectory_plot", False)),
            _max_sub_envs(env_id, inner.metadata.get("max_sub_envs")),
        )
    finally:
        env.close()


@dataclass(frozen=True)
class TaskFamily:
    """A resolved task family (build with :meth:`from_config` or :meth:`make`): a small
    picklable value that holds no env and changes no global state after it is made.

    Attributes:
        env_id: the registered Gymnasium id (a ``module:`` prefix resolved away).
        env_kwargs: keyword arguments of every env of the family.
        horizon: H, the configured ``max_episode_steps`` or the id's registered one.
        max_episode_steps: the configured horizon (None: the registered one is used).
        normalize_actions: see :class:`ActionMapping` (Box action spaces only).
        imports: modules to import before the id is known (Ray workers re-import them).
        description: its spaces, task space and render modes (:func:`describe_family`).
    """

    env_id: str
    env_kwargs: dict[str, Any]
    horizon: int
    max_episode_steps: int | None
    normalize_actions: bool
    imports: tuple[str, ...]
    description: FamilyDescription = field(compare=False, repr=False)

    @classmethod
    def make(
        cls,
        env_id: str,
        env_kwargs: dict[str, Any] | None = None,
        max_episode_steps: int | None = None,
        normalize_actions: bool = False,
        env_import: str | None = None,
    ) -> TaskFamily:
        """Import what registers the family, resolve its id and horizon, and describe it from
        one env (built and closed here; ``ValueError`` for an id that is no task family)."""
        imports = [*([env_import] if env_import else []), BUILT_IN_FAMILIES]
        for module in imports:
            import_user_module(module, "env_import module")
        if ":" in env_id:
            imports.append(env_id.split(":", 1)[0])
        resolved = resolve_env_id(env_id)
        horizon = max_episode_steps or gym.spec(resolved).max_episode_steps
        if not horizon or horizon <= 0:
            raise ValueError(f"{resolved} has no max_episode_steps; set max_episode_steps")
        kwargs = dict(env_kwargs or {})
        return cls(
            resolved,
            kwargs,
            int(horizon),
            max_episode_steps,
            bool(normalize_actions),
            tuple(imports),
            describe_family(resolved, kwargs),
        )

    @classmethod
    def from_config(cls, config: FamilySettings) -> TaskFamily:
        """The family a config's :class:`~maml_rl.settings.FamilySettings` describe."""
        return cls.make(
            config.env_id,
            config.env_kwargs,
            config.max_episode_steps,
            config.normalize_actions,
            config.env_import,
        )

    def import_modules(self) -> None:
        """Import :attr:`imports` (in a fresh process, e.g. a Ray worker, before any env)."""
        for module in self.imports:
            import_user_module(module, "task family module")

    # -- environments -----------------------------------------------------------------------
    def make_env(self, task: Any = None, **kwargs: Any) -> gym.Env:
        """A single env of the family with its horizon, set to ``task`` when given; ``kwargs``
        go to ``gym.make`` (e.g. ``render_mode``)."""
        extra: dict[str, Any] = {}
        if self.max_episode_steps is not None:
            extra["max_episode_steps"] = self.max_episode_steps
        if task is not None:
            extra["task"] = task
        return make_family_env(self.env_id, self.env_kwargs, **extra, **kwargs)

    def make_batched_env(
        self, num_envs: int, num_threads: int | None = None
    ) -> gym.vector.VectorEnv:
        """A batched env of ``num_envs`` sub-envs, truncated at the configured horizon when
        one is set (see :func:`make_batched_env`)."""
        return make_batched_env(
            self.env_id, num_envs, self.env_kwargs, num_threads, self.max_episode_steps
        )

    @property
    def observation_space(self) -> gym.Space:
        return self.description.observation_space

    @property
    def action_space(self) -> gym.Space:
        return self.description.action_space

    @property
    def render_modes(self) -> tuple[str, ...]:
        """The render modes of the family's env (``rgb_array`` for videos)."""
        return self.description.render_modes

    @property
    def plots_paths(self) -> bool:
        """Whether the evaluation draws this family's paths (see :class:`FamilyDescription`)."""
        return self.description.plots_paths

    @property
    def max_sub_envs(self) -> int | None:
        """The most sub-envs in one batched env of the family (see :class:`FamilyDescription`)."""
        return self.description.max_sub_envs

    def action_mapping(self, space: gym.spaces.Space | None = None) -> ActionMapping:
        """Policy actions -> env actions for ``space`` (default: the family's action space)."""
        return ActionMapping(space or self.action_space, self.normalize_actions, self.env_id)

    # -- tasks --------------------------------------------------------------------------------
    def sample_tasks(self, num_tasks: int, rng: np.random.Generator) -> list[Any]:
        """``num_tasks`` tasks drawn from the family's task distribution with ``rng``.

        A task space without ``sample``, or whose ``sample`` raises or returns another number
        of tasks, is a :class:`UserEnvError` naming the env and the task space's class."""
        space = self.description.task_space
        if self.description.samples_from_task_space:  # maml_envs' sample_tasks: space.sample
            what = f"task space {type(space).__name__}.sample({num_tasks}, rng)"
            if not callable(getattr(space, "sample", None)):
                raise UserEnvError(
                    f"env {self.env_id}: task space {type(space).__name__} has no "
                    "sample(n, rng) method"
                )
            draw = space.sample
        else:  # a family's own sample_tasks needs its env
            what = f"sample_tasks({num_tasks}, rng)"
            draw = self._env_sample_tasks
        try:
            tasks = draw(num_tasks, rng)
        except PASSED_ON:
            raise
        except Exception as err:
            raise user_code_failed(self.env_id, what, err) from err
        try:
            tasks = list(tasks)
        except TypeError:
            raise UserEnvError(
                f"env {self.env_id}: {what} returned {type(tasks).__name__}, not a list of tasks"
            ) from None
        if len(tasks) != num_tasks:
            raise UserEnvError(
                f"env {self.env_id}: {what} returned {len(tasks)} tasks, expected {num_tasks}"
            )
        return tasks

    def training_tasks(self, seed: int, iteration: int, num_tasks: int) -> list[Any]:
        """The tasks of meta-iteration ``iteration`` of a run seeded ``seed`` (for a benchmark's
        :class:`~maml_envs.task_family.SplitTaskSpace`: its training tasks, the benchmark built
        with ``seed``)."""
        rng = np.random.default_rng(derive_seed(seed, iteration, TASKS))
        if self._split_space() is not None:
            return self._split_tasks("train", num_tasks, rng, seed)
        return self.sample_tasks(num_tasks, rng)

    def test_tasks(
        self,
        num_tasks: int,
        seed: int,
        source: str = "seeded",
        benchmark_seed: int | None = None,
    ) -> list[Any]:
        """The N test tasks: drawn with the test seed (``seeded``, the same on every call; for
        a benchmark's :class:`~maml_envs.task_family.SplitTaskSpace` from the held-out test
        tasks of the benchmark built with ``benchmark_seed``, the trained run's seed, default
        ``seed``) or the authors' fixed ones (``authors``), validated by the family's task
        space."""
        if source == "authors":
            space = self.description.task_space
            return [space.validate(task) for task in authors_test_tasks(self.env_id, num_tasks)]
        rng = np.random.default_rng(derive_seed(seed, TEST_STREAM))
        if self._split_space() is not None:
            at = seed if benchmark_seed is None else benchmark_seed
            return self._split_tasks("test", num_tasks, rng, at)
        return self.sample_tasks(num_tasks, rng)

    def _split_space(self) -> SplitTaskSpace[Any] | None:
        space = self.description.task_space
        return space if isinstance(space, SplitTaskSpace) else None

    def _split_tasks(
        self, split: str, num_tasks: int, rng: np.random.Generator, seed: int
    ) -> list[Any]:
        """``num_tasks`` tasks of a benchmark's ``split`` (``train``/``test``), validated."""
        space = self._split_space()
        what = f"task space {type(space).__name__}.sample_split({split!r}, {num_tasks}, rng, seed)"
        try:
            tasks = [space.validate(t) for t in space.sample_split(split, num_tasks, rng, seed)]
        except PASSED_ON:
            raise
        except Exception as err:
            raise user_code_failed(self.env_id, what, err) from err
        if len(tasks) != num_tasks:
            raise UserEnvError(
                f"env {self.env_id}: {what} returned {len(tasks)} tasks, expected {num_tasks}"
            )
        return tasks

    def _env_sample_tasks(self, num_tasks: int, rng: np.random.Generator) -> Any:
        """``sample_tasks`` of a family that draws its tasks in its env (built and closed)."""
        env = make_family_env(self.env_id, self.env_kwargs)
        try:
            return env.unwrapped.sample_tasks(num_tasks, rng)
        finally:
            env.close()
