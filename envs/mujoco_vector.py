"""Batched MuJoCo locomotion envs: N sub-envs stepped in C on a thread pool, no Python loop.

Physics runs in ``mujoco.batch.Batch`` (MuJoCo >= 4.0), which keeps each sub-env's full
integration state (``mjSTATE_INTEGRATION``: qpos, qvel, act, **qacc_warmstart**, ...) and steps
the chosen sub-envs on ``num_threads`` threads; its results are bit-identical to one ``MjData``
per sub-env. ``mujoco.rollout.Rollout`` was the first choice but restarts every call from
``mjSTATE_FULLPHYSICS``, which lacks the solver warm start, and offers no way to read the warm
start back: the cheetah's trajectories then drift from Gymnasium's (0.1 in qpos after 100 steps
on MuJoCo 4.0). With ``Batch`` the batched envs equal the single envs exactly.

Observations and rewards are computed from the (N, nq) / (N, nv) state arrays with numpy.
"""

from __future__ import annotations

import os
from abc import abstractmethod
from typing import Any

import gymnasium.envs.mujoco
import mujoco
import numpy as np
from gymnasium import spaces
from gymnasium.vector.utils import batch_space
from mujoco import batch as mj_batch

from maml_envs.rewards import sum_terms
from maml_envs.task_family import TaskFamilyVectorEnv, TaskSpace


def gymnasium_asset(xml_file: str) -> str:
    """Path of one of Gymnasium's MuJoCo model files (as ``MujocoEnv`` resolves it)."""
    return os.path.join(os.path.dirname(gymnasium.envs.mujoco.__file__), "assets", xml_file)


class MujocoTaskVectorEnv(TaskFamilyVectorEnv):
    """Base class of the batched MuJoCo task families (half-cheetah, ant).

    Each ``step`` writes the actions of the unfinished sub-envs to ``ctrl`` and advances those
    sub-envs by ``frame_skip`` physics steps with the control held constant, as Gymnasium's
    ``MujocoEnv.do_simulation`` does; finished sub-envs are not simulated. The forward velocity
    is ``(qpos[0]_after - qpos[0]_before) / dt`` with ``dt = timestep * frame_skip``.

    Initial states: ``qpos = model.qpos0 + U(-s, s)``, ``qvel = s * N(0, 1)`` with
    ``s = reset_noise_scale``, drawn from ``self.np_random`` (seeded by ``reset(seed=...)``) for
    all sub-envs at once (or from one generator per sub-env for a list of seeds), the
    distribution of Gymnasium's v5 ``reset_model``.
    :meth:`set_state` sets exact states (for tests).

    Subclasses implement :meth:`_observe` and :meth:`_rewards`, and may override
    :meth:`_terminated_now`.

    Args:
        num_envs: number of sub-envs N.
        model: the compiled model (sensors may be added for reward terms).
        task_space, task, max_episode_steps: see :class:`TaskFamilyVectorEnv`.
        frame_skip: physics steps per env step.
        reset_noise_scale: scale ``s`` of the initial-state noise.
        num_threads: threads of the physics pool (default ``os.cpu_count()``).
        step_stage: ``mjtStage`` computed at the new state after each step (0: none, derived
            fields then describe the state before the last substep, as after ``mj_step``).
        persistent: keep one ``MjData`` per sub-env (``mujoco.batch``'s ``persistent``), so
            that the next step continues from the stages computed at the new state instead of
            recomputing them; bit-identical either way, and which is faster depends on the
            model (see :class:`maml_envs.rllab_locomotion.RllabTask`).
    """

    def __init__(
        self,
        num_envs: int,
        model: mujoco.MjModel,
        task_space: TaskSpace[Any],
        task: Any,
        max_episode_steps: int | None,
        obs_dim: int,
        frame_skip: int = 5,
        reset_noise_scale: float = 0.1,
        num_threads: int | None = None,
        step_stage: int = 0,
        persistent: bool = False,
    ):
        self._init_task_family(num_envs, task_space, max_episode_steps, task)
        if num_threads is None:
            num_threads = os.cpu_count() or 1
        if num_threads < 1:
            raise ValueError(f"num_threads must be >= 1, got {num_threads}")
        self.model = model
        self.frame_skip = int(frame_skip)
        self.dt = float(model.opt.timestep) * self.frame_skip
        self.reset_noise_scale = float(reset_noise_scale)
        self.num_threads = int(num_threads)
        self.step_stage = int(step_stage)
        self.batch = mj_batch.Batch(
            model, nsim=self.num_envs, nthread=self.num_threads, persistent=persistent
        )
        self._qpos = self.batch.bind("qpos")
        self._qvel = self.batch.bind("qvel")
        self._ctrl = self.batch.bind("ctrl")
        self._sensordata = self.batch.bind("sensordata") if model.nsensordata else None
        self._init_qpos = model.qpos0.copy()
        low, high = model.actuator_ctrlrange.T.astype(np.float32)
        self.single_action_space = spaces.Box(low=low, high=high, dtype=np.float32)
        self.single_observation_space = spaces.Box(-np.inf, np.inf, (obs_dim,), np.float64)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)

    # --- state -----------------------------------------------------------------------------
    @property
    def qpos(self) -> np.ndarray:
        """(N, nq) copy of the positions."""
        return self._qpos.copy()

    @property
    def qvel(self) -> np.ndarray:
        """(N, nv) copy of the velocities."""
        return self._qvel.copy()

    def set_state(self, qpos: np.ndarray, qvel: np.ndarray) -> np.ndarray:
        """Set every sub-env's (qpos, qvel) as Gymnasium's ``MujocoEnv.set_state`` does
        (fresh data, then ``mj_forward``); returns the (N, obs_dim) observations.

        Call after ``reset()``: it keeps the episode bookkeeping (step counts, finished flags).
        """
        qpos = np.asarray(qpos, dtype=np.float64)
        qvel = np.asarray(qvel, dtype=np.float64)
        if qpos.shape != self._qpos.shape or qvel.shape != self._qvel.shape:
            raise ValueError(
                f"state shapes {qpos.shape}, {qvel.shape}; expected "
                f"{self._qpos.shape}, {self._qvel.shape}"
            )
        self.batch.reset(stage=mujoco.mjtStage.mjSTAGE_NONE.value)
        self._qpos[:] = qpos
        self._qvel[:] = qvel
        self.batch.forward()
        self._last_obs = self._observe()
        return self._last_obs.copy()

    def _reset_all(self) -> np.ndarray:
        return self.set_state(*self._sample_initial_state())

    def _sample_initial_state(self) -> tuple[np.ndarray, np.ndarray]:
        """(qpos, qvel) of every sub-env: Gymnasium v5's ``qpos0 + U(-s, s)``, ``s N(0, 1)``."""
        s = self.reset_noise_scale
        qpos = self._init_qpos + self._draw_per_env(
            lambda rng, size: rng.uniform(-s, s, size), (self.model.nq,)
        )
        qvel = s * self._draw_per_env(lambda rng, size: rng.standard_normal(size), (self.model.nv,))
        return qpos, qvel

    def _step_active(
        self, actions: np.ndarray, active: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        x_before = self._qpos[:, 0].copy()
        if active.all():
            self._ctrl[:] = actions
            self.batch.step(nstep=self.frame_skip, stage=self.step_stage)
        else:
            ids = np.flatnonzero(active)
            self._ctrl[ids] = actions[ids]
            self.batch.step(ids, nstep=self.frame_skip, stage=self.step_stage)
        x_velocity = self._forward_velocity(x_before)
        terms = self._rewards(x_velocity, actions)
        rewards = sum_terms(terms)
        info = {"x_position": self._qpos[:, 0].copy(), "x_velocity": x_velocity, **terms}
        return self._observe(), rewards, self._terminated_now(), info

    # --- hooks ---------------------------------------------------------------------------
    def _forward_velocity(self, x_before: np.ndarray) -> np.ndarray:
        """(N,) forward velocity of the last step: ``(qpos[0] - x_before) / dt``."""
        return (self._qpos[:, 0] - x_before) / self.dt

    @abstractmethod
    def _observe(self) -> np.ndarray:
        """(N, obs_dim) float64 observations of the current state (a new array)."""

    @abstractmethod
    def _rewards(self, x_velocity: np.ndarray, actions: np.ndarray) -> dict[str, np.ndarray]:
        """Reward terms, each an (N,) array; the reward is their sum in this order."""

    def _terminated_now(self) -> np.ndarray:
        """(N,) bool termination of the current state (default: never)."""
        return np.zeros(self.num_envs, dtype=bool)

    def close(self, **kwargs: Any) -> None:
        self.batch = None  # type: ignore[assignment]
        super().close(**kwargs)
