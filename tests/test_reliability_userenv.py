"""A user's task family that misbehaves gets one line naming the user's code and what is wrong
(docs/reliability.md, "A user's task family that misbehaves"), never a traceback or a message
about something else; the user's own exception stays reachable as ``__cause__``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from gymnasium.vector.utils import batch_space

from maml_envs.task_family import TaskFamilyEnv, TaskFamilyVectorEnv, TaskSpace, check_actions
from maml_rl.advantages import checked_advantages
from maml_rl.batch import EpisodeBatch
from maml_rl.cli import main
from maml_rl.errors import RunFailure, UnusableBatchError, UserEnvError
from maml_rl.family import TaskFamily
from maml_rl.policy import GaussianMLPPolicy
from maml_rl.sampler import VectorSampler

VEC, SINGLE = "Faulty/Vec-v0", "Faulty/Single-v0"
FAULT_STEP = 2  # step faults hit the third step() call of an episode
NAN_SUB_ENV = 3  # the vector env's NaN observations are in this sub-env


@dataclass(frozen=True)
class Goal:
    x: float

    def as_array(self) -> np.ndarray:
        return np.array([self.x])


class GoalSpace(TaskSpace[Goal]):
    task_type: ClassVar[type] = Goal

    def __init__(self, fault: str = "") -> None:
        self.fault = fault

    def sample(self, n: int, rng: np.random.Generator) -> list[Goal]:
        if self.fault == "sample_raises":
            raise ZeroDivisionError("no goals today")
        return [Goal(float(x)) for x in rng.uniform(-1, 1, n - (self.fault == "sample_count"))]

    @property
    def default(self) -> Goal:
        return Goal(0.0)

    def _check_value(self, task: Goal) -> None:
        pass


class NoSampleSpace(GoalSpace):
    """A task space that forgot ``sample`` (TaskSpace declares it abstract)."""

    sample = TaskSpace.sample  # type: ignore[assignment]


class DuckSpace:
    """Not a TaskSpace, and without ``sample``."""

    default = Goal(0.0)

    def validate(self, task: Any) -> Any:
        return task


def task_space(fault: str) -> Any:
    if fault == "no_sample":
        return NoSampleSpace()
    return DuckSpace() if fault == "duck_space" else GoalSpace(fault)


def observe(x: np.ndarray, fault: str, where: str) -> np.ndarray:
    """Observations ``[..., 2]`` of positions ``x``, spoilt as ``fault`` says at ``where``."""
    if fault == f"{where}_raises":
        raise ValueError("boom")
    obs = np.stack([x, 2 * x], axis=-1)
    if fault == f"{where}_shape":
        return np.concatenate([obs, obs[..., :1]], axis=-1)
    if fault.startswith(f"{where}_nan"):
        obs[..., 0] = np.nan  # every row of a single env, row NAN_SUB_ENV of the vector env
    return obs


OBS_SPACE = spaces.Box(-np.inf, np.inf, (2,), np.float64)
ACT_SPACE = spaces.Box(-1.0, 1.0, (1,), np.float32)


class FaultyEnv(TaskFamilyEnv, gym.Env):
    observation_space = OBS_SPACE
    action_space = ACT_SPACE

    def __init__(self, fault: str = "", task: Goal | None = None) -> None:
        self.fault = fault
        self._init_task_family(task_space(fault), task)

    def reset_task(self, task: Any) -> None:
        if self.fault == "reset_task_raises" and task != Goal(0.0):  # not the default
            raise KeyError("no such goal")
        super().reset_task(task)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed, options=options)
        self._x, self._t = np.zeros(()), 0
        return observe(self._x, self.fault, "reset"), {}

    def step(self, action):
        action = check_actions(action, (1,))
        self._x = self._x + 0.1 * action[0]
        fault = self.fault if self._t == FAULT_STEP else ""
        self._t += 1
        return observe(self._x, fault, "step"), -float(abs(self._x)), False, False, {}


class FaultyVectorEnv(TaskFamilyVectorEnv):
    def __init__(
        self, num_envs: int, fault: str = "", task=None, max_episode_steps=5, **kwargs: Any
    ) -> None:
        self.fault = fault
        self._init_task_family(num_envs, task_space(fault), max_episode_steps, task)
        self.single_observation_space, self.single_action_space = OBS_SPACE, ACT_SPACE
        self.observation_space = batch_space(OBS_SPACE, num_envs)
        self.action_space = batch_space(ACT_SPACE, num_envs)

    def _observe(self, where: str, fault: str) -> np.ndarray:
        obs = observe(self._x, fault, where)
        if "_nan" in fault:  # only one sub-env goes wrong
            obs[np.arange(self.num_envs) != NAN_SUB_ENV] = 0.0
        return obs

    def _check_actions(self, actions: Any) -> np.ndarray:
        if self.fault.endswith("_unchecked"):  # lets NaN actions through
            return np.asarray(actions, dtype=np.float64)
        return super()._check_actions(actions)

    def _reset_all(self) -> np.ndarray:
        self._x = np.zeros(self.num_envs)
        return self._observe("reset", self.fault)

    def _step_active(self, actions, active):
        self._x = np.where(active, self._x + 0.1 * actions[:, 0], self._x)
        fault = self.fault if self._elapsed[0] == FAULT_STEP else ""
        done = np.zeros(self.num_envs, dtype=bool)
        return self._observe("step", fault), -np.abs(self._x), done, {}


@pytest.fixture(scope="module", autouse=True)
def _registered():
    gym.register(VEC, FaultyEnv, max_episode_steps=5, vector_entry_point=FaultyVectorEnv)
    gym.register(SINGLE, FaultyEnv, max_episode_steps=5)
    yield
    for env_id in (VEC, SINGLE):
        gym.registry.pop(env_id, None)


def _sample(env_id: str, fault: str, params_fault: str = "") -> EpisodeBatch:
    """Sample 4 tasks x 4 episodes (16 sub-envs) of ``env_id`` with ``fault``."""
    torch.manual_seed(0)
    family = TaskFamily.make(env_id, {"fault": fault})
    policy = GaussianMLPPolicy(2, 1, (4,))
    params = policy.params()
    if params_fault:
        params = {name: p.clone() for name, p in params.items()}
        params["layers.0.weight"][0, 0] = float(params_fault)
    tasks = family.sample_tasks(4, np.random.default_rng(0))
    sampler = VectorSampler(family, policy)
    try:
        return sampler.sample(tasks, params, episodes_per_task=4, seed=0)
    finally:
        sampler.close()


@pytest.mark.filterwarnings("ignore::UserWarning")  # the fallback's slowness, gym's checker
@pytest.mark.parametrize("env_id", [VEC, SINGLE])
@pytest.mark.parametrize("where", ["reset", "step"])
def test_observations_of_the_wrong_shape_name_the_env_the_method_and_the_space(env_id, where):
    with pytest.raises(UserEnvError) as info:
        _sample(env_id, f"{where}_shape")
    line = str(info.value)
    at = f" at step {FAULT_STEP}" if where == "step" else ""
    expected = (
        f"env {VEC}: {where}() returned observations of shape (16, 3){at}; its "
        "observation_space declares (2,) per sub-env (16 sub-envs)"
    )
    if env_id == SINGLE:  # the fallback, a SyncVectorEnv of single envs: one sub-env's
        at = f", step {FAULT_STEP}" if where == "step" else ""
        expected = (
            f"env {SINGLE}: {where}() returned an observation of shape (3,) (sub-env 0{at}); "
            "its observation_space declares (2,)"
        )
    assert line == expected


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("env_id", [VEC, SINGLE])
@pytest.mark.parametrize("where", ["reset", "step"])
def test_non_finite_observations_are_not_called_non_finite_actions(env_id, where):
    with pytest.raises(RunFailure) as info:
        _sample(env_id, f"{where}_nan")
    line = str(info.value)
    sub_env = NAN_SUB_ENV if env_id == VEC else 0
    at = f"step {FAULT_STEP}" if where == "step" else "before the first step"
    assert line.startswith(
        f"env {env_id}: {where}() returned non-finite observations (sub-env {sub_env}, {at})"
    ), line
    assert "action" not in line


def test_non_finite_observations_an_env_lets_through_are_not_called_non_finite_rewards():
    """An env that does not check its actions lets the NaN actions of NaN observations through:
    the rewards become NaN too, but the batch's error names the observations."""
    batch = _sample(VEC, "step_nan_unchecked")
    with pytest.raises(UnusableBatchError) as info:
        checked_advantages(batch, 0.99, 1.0, True, "iteration 0 batch")
    t = FAULT_STEP + 1  # the batch's step of the observations step() number FAULT_STEP returned
    assert str(info.value) == (
        "iteration 0 batch: the environment returned non-finite observations (task 0 of the "
        f"batch, episode {NAN_SUB_ENV}, step {t})"
    )


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_non_finite_policy_weights_are_named_as_such(value):
    with pytest.raises(RunFailure) as info:
        _sample(VEC, "", params_fault=value)
    line = str(info.value)
    assert "the policy's parameters are not finite (layers.0.weight" in line, line
    assert "observations" not in line


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize(
    ("env_id", "fault", "method", "error"),
    [
        (VEC, "reset_raises", "reset()", "ValueError: boom"),
        (VEC, "step_raises", "step()", "ValueError: boom"),
        (SINGLE, "reset_raises", "reset()", "ValueError: boom"),
        (SINGLE, "step_raises", "step()", "ValueError: boom"),
        (SINGLE, "reset_task_raises", "reset_task()", "KeyError: 'no such goal'"),
    ],
)
def test_a_reset_or_step_that_raises_is_named_with_the_users_error(env_id, fault, method, error):
    with pytest.raises(UserEnvError) as info:
        _sample(env_id, fault)
    assert str(info.value).startswith(f"env {env_id}: {method} raised {error}"), str(info.value)
    assert type(info.value.__cause__).__name__ == error.split(":")[0]  # the user's traceback


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        (
            "sample_raises",
            f"env {VEC}: task space GoalSpace.sample(4, rng) raised "
            "ZeroDivisionError: no goals today",
        ),
        (
            "sample_count",
            f"env {VEC}: task space GoalSpace.sample(4, rng) returned 3 tasks, expected 4",
        ),
        ("duck_space", f"env {VEC}: task space DuckSpace has no sample(n, rng) method"),
        (
            "no_sample",
            f"env {VEC}: creating it raised TypeError: Can't instantiate abstract "
            "class NoSampleSpace",
        ),
    ],
)
def test_a_task_space_that_cannot_sample_is_named(fault, message):
    with pytest.raises(UserEnvError) as info:
        TaskFamily.make(VEC, {"fault": fault}).sample_tasks(4, np.random.default_rng(0))
    assert str(info.value).startswith(message), str(info.value)


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("reset_raises", f"env {VEC}: reset() raised ValueError: boom"),
        ("sample_raises", f"env {VEC}: task space GoalSpace.sample(2, rng) raised"),
    ],
)
def test_the_command_line_says_it_in_one_line_and_exits_2(tmp_path, capsys, fault, message):
    args = ["num_iterations=1", "meta_batch_size=2", "episodes_per_task=2", "hidden_sizes=[4]"]
    args += ["progress_bar=false", f"env_id={VEC}", f"env_kwargs={{fault: {fault}}}"]
    assert main(["train", "--quiet", "--set", *args, f"log_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith(f"maml-rl: error: {message}"), err
    assert "Traceback" not in err
