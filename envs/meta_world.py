"""Meta-World's meta-learning benchmarks ML1, ML10 and ML45 as task families.

Meta-World (Yu, Quillen, He, Julian, Hausman, Finn, Levine, CoRL 2019, arXiv:1910.10897;
"Meta-World+", McLean et al. 2025, arXiv:2505.11289) is 50 Sawyer manipulation tasks (v3 in the
``metaworld`` 3.x package, Farama Foundation). Its meta-learning benchmarks, as
``metaworld.ML1``, ``metaworld.ML10`` and ``metaworld.ML45`` build them:

* **ML1** (one task, e.g. ``push-v3``): 50 training goals, 50 held-out test goals (the
  benchmark's ``_make_tasks`` with seed s for training and s + 1 for test);
* **ML10**: 10 training tasks and 5 held-out test tasks, 50 goals each (one seed for both);
* **ML45**: 45 training tasks and 5 held-out test tasks, 50 goals each.

A goal is Meta-World's ``rand_vec`` (object and goal positions, 3 or 6 numbers). The goal is
hidden from the observation (the ML benchmarks' ``partially_observable=True``: the last 3 of
the 39 numbers are 0), the horizon is 500 steps, the reward Meta-World's v2 reward, and
``info["success"]`` is 1.0 on the steps where the task is solved (an episode counts as a
success when any of its steps does, as Meta-World's evaluation, which ends episodes on success,
counts it).

Tasks are :class:`MetaWorldTask` values (the task name and the ``rand_vec`` as floats), built
from the benchmark and set on Meta-World's env through its public ``set_task``. The benchmark's
split depends on a seed: :class:`MetaWorldTaskSpace` is a
:class:`~maml_envs.task_family.SplitTaskSpace`, whose ``sample_split(split, n, rng, seed)``
draws training or held-out test tasks of the benchmark built with the run's seed.

**MuJoCo >= 3.17.** Every Meta-World env fails on MuJoCo 4.0 in
``SawyerMocapBase.reset_mocap_welds``, which writes 11 numbers into rows of ``model.eq_data``
that have 12 since MuJoCo 3.17 (``mjNEQDATA``; entry 11 marks a body weld whose relative pose is
to be computed by ``mj_setConst``, which then overwrites entries 3-9). The envs here are
subclasses of Meta-World's (:func:`welded_class`) whose ``reset_mocap_welds`` writes the same
11 numbers padded with 0 at index 11 (relative pose given, not recomputed), as MuJoCo's
changelog advises; nothing of the ``metaworld`` package is patched.

This module imports ``metaworld`` (``pip install --no-deps metaworld==3.1.1``, see
docs/metaworld.md); importing :mod:`maml_envs` registers the ids without importing it.
"""

from __future__ import annotations

import functools
import multiprocessing
import pickle
import traceback
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, ClassVar

import gymnasium as gym
import metaworld
import mujoco
import numpy as np
from gymnasium.vector.utils import batch_space
from metaworld.env_dict import ALL_V3_ENVIRONMENTS, ML1_ARGS_KWARGS, ML10_V3, ML45_V3
from metaworld.env_dict import ML10_ARGS_KWARGS as _ML10_ARGS
from metaworld.env_dict import ML45_ARGS_KWARGS as _ML45_ARGS

from maml_envs.task_family import (
    SplitTaskSpace,
    TaskFamilyEnv,
    TaskFamilyVectorEnv,
    check_actions,
)

HORIZON = 500
"""Meta-World's ``max_path_length``: steps per episode."""
BENCHMARKS = ("ML1", "ML10", "ML45")
TASK_NAMES: tuple[str, ...] = tuple(ALL_V3_ENVIRONMENTS)
"""The 50 v3 task names, in Meta-World's order (the one-hot of :meth:`MetaWorldTask.as_array`)."""
RAND_VEC_MAX = 6
"""Longest ``rand_vec`` of the 50 tasks (3 or 6 numbers)."""
METAWORLD_WELD = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 5.0)
"""The 11 numbers Meta-World writes into each weld's ``eq_data`` row: anchor 0, relative
position 0, relative quaternion (-1, 0, 0, 0), torque scale 5."""


# --- the weld fix ------------------------------------------------------------------------------
def weld_row(width: int) -> np.ndarray:
    """Meta-World's weld row for an ``eq_data`` of ``width`` entries per row (11 before MuJoCo
    3.17, 12 since): the 11 numbers, then 0 (entry 11: the relative pose is given)."""
    row = np.zeros(width, dtype=np.float64)
    row[: len(METAWORLD_WELD)] = METAWORLD_WELD[:width]
    return row


def reset_mocap_welds(self: Any) -> None:
    """``SawyerMocapBase.reset_mocap_welds`` for MuJoCo >= 3.17: the same weld rows, padded."""
    model = self.model
    if model.nmocap > 0 and model.eq_data is not None:
        row = weld_row(model.eq_data.shape[1])
        for i in range(model.neq):
            if model.eq_type[i] == mujoco.mjtEq.mjEQ_WELD:
                model.eq_data[i] = row


def pad_contact_force(data: mujoco.MjData, pad_geom: int, object_geom: int) -> float:
    """``efc_force[efc_address]`` (the force of the contact's first constraint row) summed over
    the contacts between geoms ``pad_geom`` and ``object_geom``, added in contact order from 0
    as Meta-World adds them (``SawyerXYZEnv.touching_object``), the contacts selected from the
    contact arrays rather than one Python object per contact."""
    contact = data.contact
    geom1, geom2 = contact.geom1, contact.geom2
    pair = ((geom1 == pad_geom) | (geom2 == pad_geom)) & (
        (geom1 == object_geom) | (geom2 == object_geom)
    )
    return sum(data.efc_force[contact.efc_address[pair]].tolist())


def touching_object(self: Any, object_geom_id: int) -> bool:
    """``SawyerXYZEnv.touching_object``, the same value computed from the contact arrays
    (Meta-World walks ``data.contact`` in Python, a quarter of a pick-place step): both pads
    press on the object, i.e. each pad's summed contact force with it is positive."""
    left = pad_contact_force(self.data, self.data.geom("leftpad_geom").id, object_geom_id)
    right = pad_contact_force(self.data, self.data.geom("rightpad_geom").id, object_geom_id)
    return 0 < left and 0 < right


@functools.cache
def welded_class(task_name: str) -> type:
    """Meta-World's env class of ``task_name`` (e.g. ``push-v3``) with the weld fix and the
    array form of ``touching_object`` (:func:`touching_object`, the same values); same
    ``__name__`` (Meta-World names its tasks by class name)."""
    if task_name not in ALL_V3_ENVIRONMENTS:
        raise ValueError(f"unknown Meta-World task {task_name!r}; the v3 tasks: {TASK_NAMES}")
    base = ALL_V3_ENVIRONMENTS[task_name]
    qualname = f"Welded{base.__name__}"
    cls = type(
        base.__name__,
        (base,),
        {
            "reset_mocap_welds": reset_mocap_welds,
            "touching_object": touching_object,
            "__qualname__": qualname,
            "__module__": __name__,
        },
    )
    globals()[qualname] = cls  # picklable by reference (metaworld pickles task data with it)
    return cls


def make_sawyer(task_name: str, **kwargs: Any) -> Any:
    """A Meta-World env of ``task_name`` with the weld fix (no task set yet)."""
    return welded_class(task_name)(**kwargs)


# --- tasks ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class MetaWorldTask:
    """One Meta-World task: the task name (e.g. ``push-v3``) and its goal, Meta-World's
    ``rand_vec`` (object and goal positions; 3 or 6 floats)."""

    task_name: str
    rand_vec: tuple[float, ...]

    def as_array(self) -> np.ndarray:
        """One-hot of the task among the 50 (:data:`TASK_NAMES`), then ``rand_vec`` padded
        with zeros to 6 (56 floats; what a goal-observing oracle would see)."""
        out = np.zeros(len(TASK_NAMES) + RAND_VEC_MAX, dtype=np.float64)
        out[TASK_NAMES.index(self.task_name)] = 1.0
        out[len(TASK_NAMES) : len(TASK_NAMES) + len(self.rand_vec)] = self.rand_vec
        return out

    def to_metaworld(self) -> metaworld.Task:
        """The ``metaworld.Task`` a goal-hidden ML benchmark makes for this goal (for
        ``env.set_task`` of a :func:`welded_class` env)."""
        data = {
            "rand_vec": np.array(self.rand_vec, dtype=np.float64),
            "env_cls": ALL_V3_ENVIRONMENTS[self.task_name],  # set_task's isinstance check
            "partially_observable": True,
        }
        return metaworld.Task(env_name=self.task_name, data=pickle.dumps(data))


@dataclass(frozen=True)
class _ClassInfo:
    reset_low: np.ndarray
    reset_high: np.ndarray
    observation_space: gym.spaces.Box
    first_goal: tuple[float, ...]


@functools.cache
def _class_info(task_name: str) -> _ClassInfo:
    """The goal bounds, observation space and first seed-0 goal of a task (one env built)."""
    state = np.random.get_state()
    try:  # Meta-World draws goals from NumPy's global generator, seeded by its benchmarks
        np.random.seed(0)
        env = make_sawyer(task_name)
        env._freeze_rand_vec = False
        env._set_task_called = True
        env.reset()
        first = tuple(float(x) for x in env._last_rand_vec)
    finally:
        np.random.set_state(state)
    space = env._random_reset_space
    info = _ClassInfo(space.low.copy(), space.high.copy(), env.observation_space, first)
    env.close()
    return info


def benchmark_classes(benchmark: str, task_name: str | None = None) -> tuple[list[str], list[str]]:
    """The training and held-out test task names of a benchmark (ML1: ``task_name`` twice)."""
    if benchmark == "ML1":
        if task_name not in ALL_V3_ENVIRONMENTS:
            raise ValueError(f"ML1 needs task_name, one of the v3 tasks {TASK_NAMES}")
        return [task_name], [task_name]
    if benchmark in ("ML10", "ML45"):
        split = ML10_V3 if benchmark == "ML10" else ML45_V3
        return list(split["train"]), list(split["test"])
    raise ValueError(f"unknown benchmark {benchmark!r}; one of {BENCHMARKS}")


def _decode(tasks: list[metaworld.Task]) -> dict[str, tuple[MetaWorldTask, ...]]:
    out: dict[str, list[MetaWorldTask]] = OrderedDict()
    for task in tasks:
        # our own pickles, just made by _make_tasks from welded_class envs
        rand_vec = pickle.loads(task.data)["rand_vec"]
        goal = MetaWorldTask(task.env_name, tuple(float(x) for x in rand_vec))
        out.setdefault(task.env_name, []).append(goal)
    return {name: tuple(goals) for name, goals in out.items()}


@functools.lru_cache(maxsize=4)
def benchmark_split(
    benchmark: str, task_name: str | None, seed: int
) -> tuple[dict[str, tuple[MetaWorldTask, ...]], dict[str, tuple[MetaWorldTask, ...]]]:
    """The training and test goals of ``metaworld.<benchmark>(seed=seed)``: for each task name
    (in the benchmark's order) its 50 goals, in the order Meta-World generates them.

    Built as Meta-World's benchmark classes build them (``metaworld._make_tasks`` with the same
    task lists, overrides and seeds: ML1 ``seed`` / ``seed + 1``, ML10/ML45 ``seed`` for both)
    from :func:`welded_class` envs, which draw the same goals. Cached per process (ML45 takes
    about half a minute: 50 tasks x 50 resets)."""
    train, test = benchmark_classes(benchmark, task_name)
    if benchmark == "ML1":
        args = {task_name: ML1_ARGS_KWARGS[task_name]}
        train_args, test_args, test_seed = args, args, seed + 1
    else:
        kwargs = _ML10_ARGS if benchmark == "ML10" else _ML45_ARGS
        train_args, test_args, test_seed = kwargs["train"], kwargs["test"], seed

    def make(names: list[str], args: dict[str, Any], at: int) -> list[metaworld.Task]:
        classes = OrderedDict((name, welded_class(name)) for name in names)
        return metaworld._make_tasks(classes, args, metaworld._ML_OVERRIDE, seed=at)

    return _decode(make(train, train_args, seed)), _decode(make(test, test_args, test_seed))


class MetaWorldTaskSpace(SplitTaskSpace[MetaWorldTask]):
    """The tasks of a Meta-World ML benchmark: each task name of its split with its goals.

    ``sample`` draws training tasks of the benchmark built with ``seed`` (default 0); the
    ``maml_rl`` run passes its own seed through ``sample_split``. Drawing n tasks from a split of
    C task names is balanced, as Meta-World's ML vector envs spread a meta-batch: each name
    ``n // C`` times (the remaining ``n % C`` names drawn at random), its goals without
    replacement from its 50 (again from the top after 50), tasks grouped by name in the
    benchmark's order (so a batched env's sub-env keeps its task name from batch to batch).

    Args:
        benchmark: ``ML1``, ``ML10`` or ``ML45``.
        task_name: the task of ML1 (any of :data:`TASK_NAMES`); ignored otherwise.
        seed: the benchmark seed of :meth:`sample` (``sample_split`` takes one explicitly).
    """

    task_type: ClassVar[type] = MetaWorldTask

    def __init__(self, benchmark: str = "ML1", task_name: str | None = None, seed: int = 0):
        self.benchmark = benchmark
        self.task_name = task_name if benchmark == "ML1" else None
        self.train_names, self.test_names = benchmark_classes(benchmark, self.task_name)
        self.seed = int(seed)

    def split_tasks(self, split: str, seed: int) -> dict[str, tuple[MetaWorldTask, ...]]:
        """Every task of ``split`` (``train`` or ``test``) of the benchmark built with ``seed``."""
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        train, test = benchmark_split(self.benchmark, self.task_name, int(seed))
        return train if split == "train" else test

    def sample_split(
        self, split: str, n: int, rng: np.random.Generator, seed: int
    ) -> list[MetaWorldTask]:
        goals = self.split_tasks(split, seed)
        names = list(goals)
        counts = np.full(len(names), n // len(names))
        counts[np.sort(rng.choice(len(names), n % len(names), replace=False))] += 1
        tasks: list[MetaWorldTask] = []
        for name, count in zip(names, counts):
            pool = goals[name]
            order = np.concatenate(
                [rng.permutation(len(pool)) for _ in range(-(-int(count) // len(pool)))]
                or [np.zeros(0, dtype=np.int64)]
            )
            tasks += [pool[int(i)] for i in order[:count]]
        return tasks

    def sample(self, n: int, rng: np.random.Generator) -> list[MetaWorldTask]:
        return self.sample_split("train", n, rng, self.seed)

    @property
    def default(self) -> MetaWorldTask:
        """The first training goal of the benchmark at seed 0 (its first task name)."""
        name = self.train_names[0]
        return MetaWorldTask(name, _class_info(name).first_goal)

    def _check_value(self, task: MetaWorldTask) -> None:
        names = self.train_names + [n for n in self.test_names if n not in self.train_names]
        if task.task_name not in names:
            raise ValueError(f"task {task.task_name!r} is not in {self.benchmark} ({names})")
        info = _class_info(task.task_name)
        vec = task.rand_vec
        if not isinstance(vec, tuple) or len(vec) != len(info.reset_low):
            raise ValueError(
                f"{task.task_name} goals (rand_vec) are tuples of {len(info.reset_low)} floats"
            )
        array = np.asarray(vec, dtype=np.float64)
        if not np.isfinite(array).all() or (array < info.reset_low - 1e-9).any():
            raise ValueError(f"{task.task_name} goal {vec} outside {info.reset_low}..")
        if (array > info.reset_high + 1e-9).any():
            raise ValueError(f"{task.task_name} goal {vec} outside ..{info.reset_high}")


def _spaces(task_space: MetaWorldTaskSpace) -> tuple[gym.spaces.Box, gym.spaces.Box]:
    observation = _class_info(task_space.train_names[0]).observation_space
    action = gym.spaces.Box(-1.0, 1.0, (4,), dtype=np.float32)
    return observation, action


# --- the single env --------------------------------------------------------------------------
class MetaWorldEnv(TaskFamilyEnv, gym.Env):
    """One Meta-World env of an ML benchmark, goal hidden, set to a :class:`MetaWorldTask`.

    Meta-World's env of the task's name (:func:`welded_class`) is built when a task of another
    name is set. Resets are deterministic given the task (Meta-World draws no reset noise once a
    goal is set); ``seed`` only seeds ``np_random``.

    Observations: 39 float64 (hand, gripper, objects, the previous frame's; the goal's 3 are 0).
    Actions: 4 in [-1, 1] (hand motion, gripper). Reward: Meta-World's (0..10).
    ``info["success"]``: 1.0 on steps where the task is solved, with Meta-World's other terms.

    Args:
        benchmark: ``ML1``, ``ML10`` or ``ML45``.
        task_name: the ML1 task (e.g. ``push-v3``); ignored for ML10 and ML45.
        task: the initial task (default: the task space's default).
        max_path_length: Meta-World's own episode limit (500; the registered horizon too).
        render_mode: Meta-World's (``rgb_array``, ``depth_array``, ``human``).
    """

    # max_sub_envs: a stepped Meta-World env holds about 30 MB (meshes, textures), so a sampler
    # builds batched envs of at most 100 of them (about 3 GB) and samples larger batches in parts
    metadata: dict[str, Any] = {  # noqa: RUF012
        "render_modes": ["rgb_array", "depth_array", "human"],
        "max_sub_envs": 100,
    }

    def __init__(
        self,
        benchmark: str = "ML1",
        task_name: str | None = "reach-v3",
        task: MetaWorldTask | None = None,
        max_path_length: int = HORIZON,
        render_mode: str | None = None,
    ) -> None:
        space = MetaWorldTaskSpace(benchmark, task_name)
        self.observation_space, self.action_space = _spaces(space)
        self.render_mode = render_mode
        self.max_path_length = int(max_path_length)
        self._sawyer: Any = None
        self._init_task_family(space, task)

    @property
    def sawyer(self) -> Any:
        """Meta-World's env of the current task."""
        return self._sawyer

    def reset_task(self, task: MetaWorldTask) -> None:
        super().reset_task(task)
        if self._sawyer is None or self._sawyer.task_name != welded_class(task.task_name).__name__:
            if self._sawyer is not None:
                self._sawyer.close()
            self._sawyer = make_sawyer(task.task_name, render_mode=self.render_mode)
            self._sawyer.max_path_length = self.max_path_length
        self._sawyer.set_task(task.to_metaworld())

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed, options=options)
        obs, info = self._sawyer.reset()
        return obs, info

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        action = check_actions(action, (4,))
        obs, reward, _, truncated, info = self._sawyer.step(action)
        return obs, float(reward), False, bool(truncated), info

    def render(self) -> Any:
        return self._sawyer.render()

    def close(self) -> None:
        if self._sawyer is not None:
            self._sawyer.close()


# --- the batched env -------------------------------------------------------------------------
class _Shard:
    """Meta-World envs stepped one after the other (one per sub-env, kept while its task name
    stays the same): the body of a worker process, or of the in-process batched env."""

    def __init__(self, max_path_length: int) -> None:
        self.max_path_length = max_path_length
        self.envs: list[Any] = []

    def reset(self, tasks: list[MetaWorldTask]) -> np.ndarray:
        while len(self.envs) < len(tasks):
            self.envs.append(None)
        obs = np.zeros((len(tasks), 39), dtype=np.float64)
        for i, task in enumerate(tasks):
            env = self.envs[i]
            if env is None or env.task_name != welded_class(task.task_name).__name__:
                if env is not None:
                    env.close()
                env = self.envs[i] = make_sawyer(task.task_name)
                env.max_path_length = self.max_path_length
            env.set_task(task.to_metaworld())
            obs[i] = env.reset()[0]
        return obs

    def step(
        self, actions: np.ndarray, active: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = len(actions)
        obs = np.zeros((n, 39), dtype=np.float64)
        rewards = np.zeros(n, dtype=np.float64)
        success = np.zeros(n, dtype=np.float64)
        for i in np.flatnonzero(active):
            obs[i], reward, _, _, info = self.envs[i].step(actions[i])
            rewards[i] = reward
            success[i] = info["success"]
        return obs, rewards, success

    def close(self) -> None:
        for env in self.envs:
            if env is not None:
                env.close()
        self.envs.clear()


def _worker(conn: Any, max_path_length: int) -> None:
    shard = _Shard(max_path_length)
    try:
        while True:
            command, args = conn.recv()
            if command == "close":
                break
            try:
                conn.send(("ok", getattr(shard, command)(*args)))
            except Exception as err:
                conn.send(("error", f"{type(err).__name__}: {err}\n{traceback.format_exc()}"))
    except (EOFError, KeyboardInterrupt):
        pass
    finally:
        shard.close()
        conn.close()


class _ProcessShard:
    """A :class:`_Shard` in a worker process (spawned: no state inherited from the parent)."""

    def __init__(self, max_path_length: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(
            target=_worker, args=(child, max_path_length), daemon=True, name="metaworld-shard"
        )
        self.process.start()
        child.close()

    def send(self, command: str, *args: Any) -> None:
        self.conn.send((command, args))

    def receive(self) -> Any:
        status, value = self.conn.recv()
        if status != "ok":
            raise RuntimeError(f"Meta-World worker failed: {value}")
        return value

    def close(self) -> None:
        try:
            self.conn.send(("close", ()))
        except (BrokenPipeError, OSError):
            pass
        self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.kill()
        self.conn.close()


DEFAULT_NUM_WORKERS = 0
"""Worker processes of :class:`MetaWorldVectorEnv` when neither ``num_workers`` nor
``num_threads`` is given (docs/metaworld.md has the measurement behind the choice)."""


class MetaWorldVectorEnv(TaskFamilyVectorEnv):
    """N Meta-World sub-envs, one task each, no autoreset; stepped in this process or split
    over worker processes (Meta-World's step is Python: ``mujoco.batch`` cannot step it).

    See :class:`maml_envs.task_family.TaskFamilyVectorEnv` for the reset/step semantics;
    ``info["success"]`` is an (N,) float array (0.0 for finished sub-envs). Seeds are accepted
    and unused (resets are deterministic given the task).

    Args:
        num_envs: N.
        benchmark, task_name, task, max_path_length: as :class:`MetaWorldEnv`.
        max_episode_steps: horizon (from the registration: 500).
        num_workers: worker processes, each stepping a contiguous block of sub-envs (0 or 1:
            none, all in this process; default: ``num_threads``, else
            :data:`DEFAULT_NUM_WORKERS`).
        num_threads: the sampler's physics-threads setting, used as ``num_workers`` when that
            is not given.
    """

    def __init__(
        self,
        num_envs: int,
        benchmark: str = "ML1",
        task_name: str | None = "reach-v3",
        task: MetaWorldTask | None = None,
        max_episode_steps: int | None = HORIZON,
        max_path_length: int = HORIZON,
        num_workers: int | None = None,
        num_threads: int | None = None,
        render_mode: str | None = None,
    ) -> None:
        space = MetaWorldTaskSpace(benchmark, task_name)
        self.single_observation_space, self.single_action_space = _spaces(space)
        self._init_task_family(num_envs, space, max_episode_steps, task)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.render_mode = render_mode
        path_length = max(int(max_path_length), int(max_episode_steps or 0))
        workers = num_workers if num_workers is not None else num_threads
        workers = DEFAULT_NUM_WORKERS if workers is None else int(workers)
        self.num_workers = min(max(workers, 0), self.num_envs)
        blocks = np.array_split(np.arange(self.num_envs), max(self.num_workers, 1))
        self._blocks = [(int(b[0]), int(b[-1]) + 1) for b in blocks]
        self._local: _Shard | None = None
        self._workers: list[_ProcessShard] = []
        if self.num_workers <= 1:
            self._local = _Shard(path_length)
        else:
            self._workers = [_ProcessShard(path_length) for _ in self._blocks]

    def _call(self, command: str, *per_block: list[Any]) -> list[Any]:
        if self._local is not None:
            return [getattr(self._local, command)(*(args[0] for args in per_block))]
        for worker, *args in zip(self._workers, *per_block):
            worker.send(command, *args)
        return [worker.receive() for worker in self._workers]

    def _reset_all(self) -> np.ndarray:
        tasks = [self._tasks[a:b] for a, b in self._blocks]
        return np.concatenate(self._call("reset", tasks))

    def _step_active(
        self, actions: np.ndarray, active: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        parts = self._call(
            "step", [actions[a:b] for a, b in self._blocks], [active[a:b] for a, b in self._blocks]
        )
        obs, rewards, success = (np.concatenate([p[i] for p in parts]) for i in range(3))
        return obs, rewards, np.zeros(self.num_envs, dtype=bool), {"success": success}

    def close_extras(self, **kwargs: Any) -> None:
        if self._local is not None:
            self._local.close()
        for worker in self._workers:
            worker.close()
        self._workers = []
