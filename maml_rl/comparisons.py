"""The paper's comparison methods (Finn et al. 2017, section 5.3, Figure 5), as run folders.

* ``pretrained``: one policy trained on tasks drawn from the family without meta-learning:
  our MAML-TRPO learner with ``num_inner_steps=0``, whose objective is then exactly multi-task
  TRPO on the pre-update batch (same tasks per iteration, rollouts, baseline and trust region).
  At meta-test time it is fine-tuned with the same gradient steps as MAML.
* ``random``: the same fine-tuning from an untrained policy (nothing to train; see
  :func:`maml_rl.evaluation.random_policy`).
* ``oracle``: stable-baselines3 PPO on observations with the task parameters
  (``task.as_array()``) appended, a new task drawn from the family at every reset; evaluated
  on the test tasks without adaptation. A Gaussian policy for Box actions, a categorical one
  for Discrete actions (the bandit's arm probabilities, the tabular MDP's tables appended).

A baseline run folder holds ``config.yaml`` (the family's :class:`TrainConfig`) and
``baseline.yaml`` (``kind`` and the training budget); ``load_method`` in
:mod:`maml_rl.evaluation` reads both. Both kinds are named and held as every run folder is
(:mod:`maml_rl.run_folders`: ``<env>__<kind>__<seed>__<time>`` inside ``log_dir``; refused
unless new or only ours, locked, removed again when the start fails before anything worth
keeping is written).
"""

from __future__ import annotations

import dataclasses
import inspect
import io
import json
import math
import pickle
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import yaml

from maml_rl.config import TrainConfig, from_dict
from maml_rl.errors import CheckpointError
from maml_rl.family import TaskFamily
from maml_rl.files import atomic_write, atomic_write_text
from maml_rl.run import TrainingCallback, train
from maml_rl.run_folders import CONFIG_NAME, locked_run_folder, run_folder
from maml_rl.sampler import run_episodes, task_parts
from maml_rl.seeding import ORACLE_TASKS, derive_seed, episode_seeds, task_seeds
from maml_rl.trainer import MAMLTrainer

MARKER_NAME = "baseline.yaml"
"""The file that marks a comparison run folder (its kind and budget)."""
ORACLE_MODEL = "oracle.zip"
KINDS = ("pretrained", "oracle")
_PPO_FIXED = {"self", "policy", "env", "seed", "device", "verbose", "tensorboard_log"}


def run_kind(path: str | Path) -> str:
    """``maml``, ``pretrained`` or ``oracle`` for a run folder or a checkpoint file in one."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    marker = folder / MARKER_NAME
    if marker.is_file():
        return str(yaml.safe_load(marker.read_text())["kind"])
    config = folder / CONFIG_NAME
    if config.is_file() and (yaml.safe_load(config.read_text()) or {}).get("num_inner_steps") == 0:
        return "pretrained"
    return "maml"


def _write_marker(run_dir: Path, kind: str, **details: Any) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump({"kind": kind, **details}, sort_keys=True)
    atomic_write_text(run_dir / MARKER_NAME, text)


# -- pretrained ----------------------------------------------------------------------------------
def pretrained_iterations(config: TrainConfig, timesteps: int) -> int:
    """Iterations that spend about ``timesteps`` env steps: ceil(N / (M K H)) (one batch each)."""
    horizon = TaskFamily.from_config(config).horizon
    per_iteration = config.meta_batch_size * config.episodes_per_task * horizon
    return max(1, math.ceil(timesteps / per_iteration))


def train_pretrained(
    config: TrainConfig,
    run_dir: str | Path | None = None,
    timesteps: int | None = None,
    stdout: bool = True,
) -> Path:
    """Multi-task TRPO (``num_inner_steps=0``, so no Meta-SGD step sizes either) on the family;
    returns the run folder.

    ``timesteps`` (optional) sets ``num_iterations`` from an env-step budget. A training run
    (:func:`~maml_rl.run.train`) whose ``baseline.yaml`` is written when it completes.
    """
    changes: dict[str, Any] = {"num_inner_steps": 0, "meta_sgd": False}
    if timesteps is not None:
        changes["num_iterations"] = pretrained_iterations(config, timesteps)
    config = dataclasses.replace(config, **changes).validate()
    folder = run_folder(config, "pretrained", run_dir)
    marker = _MarkWhenComplete(folder, "pretrained", num_iterations=config.num_iterations)
    return train(config, folder, stdout=stdout, callbacks=[marker])


class _MarkWhenComplete(TrainingCallback):
    """Writes the folder's ``baseline.yaml`` when the training completes, while the folder is
    still locked (after the final checkpoint); a run that stops early gets none, so the
    lifecycle can remove a folder that logged nothing."""

    def __init__(self, folder: Path, kind: str, **details: Any) -> None:
        self.folder, self.kind, self.details = folder, kind, details

    def on_stop(self, trainer: MAMLTrainer, error: BaseException | None) -> None:
        if error is None:
            _write_marker(self.folder, self.kind, **self.details)


# -- oracle --------------------------------------------------------------------------------------
class TaskObservationWrapper(gym.ObservationWrapper):
    """Appends the task parameters to the observation: o' = [o, task.as_array()].

    At every reset the task is drawn from the family with ``rng`` (training over the family), or
    set to ``task`` when one is given (evaluation on a fixed task).
    """

    def __init__(
        self, env: gym.Env, rng: np.random.Generator | None = None, task: Any = None
    ) -> None:
        super().__init__(env)
        self.family = env.unwrapped
        self.rng = rng if rng is not None else np.random.default_rng()
        self.fixed_task = task
        self.task = task if task is not None else self.family.sample_tasks(1, self.rng)[0]
        obs_space = env.observation_space
        dim = np.asarray(self.task.as_array()).shape[0]
        low = np.concatenate([obs_space.low, np.full(dim, -np.inf)]).astype(np.float32)
        high = np.concatenate([obs_space.high, np.full(dim, np.inf)]).astype(np.float32)
        self.observation_space = gym.spaces.Box(low, high, dtype=np.float32)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        if self.fixed_task is None:
            self.task = self.family.sample_tasks(1, self.rng)[0]
        obs, info = self.env.reset(seed=seed, options={**(options or {}), "task": self.task})
        return self.observation(obs), info

    def observation(self, observation: np.ndarray) -> np.ndarray:
        task = np.asarray(self.task.as_array())
        return np.concatenate([observation, task]).astype(np.float32)


def make_oracle_env(config: TrainConfig, index: int = 0, task: Any = None) -> gym.Env:
    """A single family env with the task appended to its observations (see the wrapper)."""
    family = TaskFamily.from_config(config)
    rng = np.random.default_rng(derive_seed(config.seed, index, ORACLE_TASKS))
    env = family.make_env()
    space = env.action_space
    if isinstance(space, gym.spaces.Discrete):
        if space.start != 0:  # PPO's categorical acts in 0..n-1, as the meta-learned policies
            to_env = family.action_mapping(space)
            env = gym.wrappers.TransformAction(env, to_env, gym.spaces.Discrete(int(space.n)))
    elif config.normalize_actions:  # PPO acts in [-1, 1]^d, as the meta-learned policies
        low = space.low
        to_env = family.action_mapping(space)
        unit = gym.spaces.Box(-1.0, 1.0, low.shape, space.dtype)
        env = gym.wrappers.TransformAction(env, lambda u: to_env(u).astype(low.dtype), unit)
    return TaskObservationWrapper(env, rng=rng, task=task)


def _plain(value: Any) -> Any:
    """A value (PPO settings) as YAML-safe data: containers recursed, other objects by repr."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value if isinstance(value, (int, float, str, bool, type(None))) else repr(value)


def train_oracle(
    config: TrainConfig,
    run_dir: str | Path | None = None,
    timesteps: int = 1_000_000,
    n_envs: int = 8,
    stdout: bool = True,
    ppo_kwargs: dict[str, Any] | None = None,
) -> Path:
    """stable-baselines3 PPO over the family with the task in the observation; returns the folder.

    PPO uses SB3's defaults (lr 3e-4, 10 epochs, clip 0.2, GAE lambda 0.95) with the config's
    gamma and hidden sizes (tanh, separate policy and value networks), ``n_envs`` environments
    and ``n_steps = min(2048, timesteps // n_envs)`` per rollout; ``ppo_kwargs`` override any
    PPO argument but the policy, env, seed, device and logging (``policy_kwargs`` is merged).
    SB3's logger writes ``progress.csv`` and TensorBoard events into the folder, held for the
    whole call by :func:`~maml_rl.run_folders.locked_run_folder` (a folder that already holds
    an oracle is refused first, by name); one the call created is removed again unless
    ``oracle.zip`` was written.
    """
    from stable_baselines3 import PPO

    extra = dict(ppo_kwargs or {})
    policy_kwargs = extra.pop("policy_kwargs", None) or {}
    if not isinstance(policy_kwargs, dict):
        raise ValueError(f"PPO policy_kwargs must be a mapping, got {policy_kwargs!r}")
    settable = set(inspect.signature(PPO.__init__).parameters) - _PPO_FIXED
    if unknown := sorted(set(extra) - settable):
        raise ValueError(
            f"{unknown} cannot be set on the oracle's PPO; settable: {sorted(settable)}"
        )
    folder = run_folder(config, "oracle", run_dir)
    if (folder / ORACLE_MODEL).exists():
        raise FileExistsError(f"{folder} already holds an oracle")
    with locked_run_folder(folder, new=True):  # a failed or interrupted start leaves no folder
        _fit_oracle(config, folder, timesteps, n_envs, stdout, extra, policy_kwargs)
    return folder


def _fit_oracle(
    config: TrainConfig,
    folder: Path,
    timesteps: int,
    n_envs: int,
    stdout: bool,
    extra: dict[str, Any],
    policy_kwargs: dict[str, Any],
) -> None:
    """:func:`train_oracle` once ``folder`` is locked; the archive is written atomically."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.logger import configure
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import DummyVecEnv

    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    venv = DummyVecEnv([lambda i=i: Monitor(make_oracle_env(config, i)) for i in range(n_envs)])
    n_steps = max(8, min(2048, timesteps // n_envs))
    settings: dict[str, Any] = {
        "n_steps": n_steps,
        "batch_size": min(64, n_steps * n_envs),
        "gamma": config.gamma,
        "policy_kwargs": {
            "net_arch": {"pi": list(config.hidden_sizes), "vf": list(config.hidden_sizes)}
        },
    }
    settings.update(extra)
    settings["policy_kwargs"] = {**settings["policy_kwargs"], **policy_kwargs}
    model = PPO("MlpPolicy", venv, seed=config.seed, device="cpu", verbose=0, **settings)
    outputs = ["csv", "tensorboard", *(["stdout"] if stdout else [])]
    model.set_logger(configure(str(folder), outputs))
    atomic_write_text(folder / CONFIG_NAME, yaml.safe_dump(config.to_dict(), sort_keys=True))
    model.learn(total_timesteps=timesteps, progress_bar=False)
    archive = io.BytesIO()
    model.save(archive)
    atomic_write(folder / ORACLE_MODEL, lambda f: f.write(archive.getvalue()))
    venv.close()
    _write_marker(
        folder,
        "oracle",
        algorithm="stable-baselines3 PPO",
        timesteps=int(model.num_timesteps),
        n_envs=n_envs,
        ppo=_plain(settings),
        hidden_sizes=list(config.hidden_sizes),
    )


def load_oracle(path: str | Path) -> tuple[Any, TrainConfig]:
    """The PPO policy and family config of an oracle run folder (or its ``oracle.zip``).

    Never unpickles: stable-baselines3's ``PPO.load`` would unpickle the archive's ``data``
    entries (code could run). Instead the policy is rebuilt as an ``ActorCriticPolicy`` on the
    spaces of the run's own oracle env (:func:`make_oracle_env` of its ``config.yaml``), with the
    ``policy_kwargs`` and ``use_sde`` stored as plain JSON in ``data``, and its weights read from
    ``policy.pth`` with ``torch.load(weights_only=True)``. Its ``predict`` is the one
    ``PPO.predict`` calls. An archive whose ``policy_kwargs`` are pickled objects, or whose
    weights do not fit, is a :class:`~maml_rl.errors.CheckpointError`.
    """
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    model_path = folder / ORACLE_MODEL
    if not model_path.is_file():
        raise FileNotFoundError(f"no oracle model at {model_path}")
    config = from_dict(yaml.safe_load((folder / CONFIG_NAME).read_text())).validate()
    policy_kwargs, use_sde, weights = _read_oracle_archive(model_path)
    env = make_oracle_env(config)
    try:
        return _oracle_policy(model_path, env, policy_kwargs, use_sde, weights), config
    finally:
        env.close()


def _read_oracle_archive(model_path: Path) -> tuple[dict[str, Any], bool, dict[str, Any]]:
    """``policy_kwargs`` and ``use_sde`` (plain JSON) and the ``policy.pth`` weights of an SB3
    archive, read without unpickling."""
    try:
        with zipfile.ZipFile(model_path) as archive:
            data = json.loads(archive.read("data"))
            weights = torch.load(
                io.BytesIO(archive.read("policy.pth")), map_location="cpu", weights_only=True
            )
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError, pickle.UnpicklingError) as err:
        raise CheckpointError(f"{model_path} is not a readable oracle archive: {err}") from None
    policy_kwargs = data.get("policy_kwargs") or {}
    if not isinstance(policy_kwargs, dict) or ":serialized:" in policy_kwargs:
        raise CheckpointError(
            f"{model_path}: its policy_kwargs are pickled objects, which maml-rl does not load "
            "(oracles trained by maml-rl store plain values)"
        )
    return policy_kwargs, bool(data.get("use_sde", False)), weights


def _oracle_policy(
    model_path: Path,
    env: gym.Env,
    policy_kwargs: dict[str, Any],
    use_sde: bool,
    weights: dict[str, Any],
) -> Any:
    from stable_baselines3.common.policies import ActorCriticPolicy

    with torch.random.fork_rng():  # building draws initial weights; keep the caller's stream
        policy = ActorCriticPolicy(
            env.observation_space,
            env.action_space,
            lambda _: 0.0,
            use_sde=use_sde,
            **policy_kwargs,
        )
        try:
            policy.load_state_dict(weights)
        except RuntimeError as err:
            first = str(err).strip().splitlines()[0]
            raise CheckpointError(
                f"{model_path}: its weights do not fit the run's oracle policy: {first}"
            ) from None
        if use_sde:
            policy.reset_noise()
    policy.set_training_mode(False)
    return policy


def evaluate_oracle(
    model: Any,
    family: TaskFamily,
    tasks: Sequence[Any],
    episodes_per_task: int,
    seed: int,
    deterministic: bool = False,
    num_threads: int | None = None,
) -> np.ndarray:
    """Mean return of ``episodes_per_task`` rollouts per task, all tasks in one batched env (in
    parts of tasks for a family with a ``max_sub_envs`` limit, as the samplers).

    ``model`` is anything with SB3's ``predict(obs, deterministic=...)``: the policy of
    :func:`load_oracle` or a PPO model.

    Actions are sampled from the PPO policy, like every other method's (``deterministic``: its
    mean action instead), and mapped onto the action space as the samplers do
    (:meth:`TaskFamily.action_mapping`); the episodes run in the samplers' loop
    (:func:`~maml_rl.sampler.run_episodes`) from the same per-task seeds. Returns ``[N]``.
    """
    k, n_tasks = int(episodes_per_task), len(tasks)
    seeds = task_seeds(seed, n_tasks)
    means = []
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for part in task_parts(range(n_tasks), k, family.max_sub_envs):
            means.append(
                _oracle_returns(
                    model,
                    family,
                    [tasks[i] for i in part],
                    [seeds[i] for i in part],
                    k,
                    deterministic,
                    num_threads,
                )
            )
    return np.concatenate(means)


def _oracle_returns(
    model: Any,
    family: TaskFamily,
    tasks: Sequence[Any],
    seeds: Sequence[int],
    k: int,
    deterministic: bool,
    num_threads: int | None,
) -> np.ndarray:
    """:func:`evaluate_oracle` for the tasks of one batched env (a family's ``max_sub_envs``
    part): the mean return of each task's ``k`` rollouts, ``[len(tasks)]``."""
    env = family.make_batched_env(len(tasks) * k, num_threads)
    task_arr = np.repeat(np.stack([np.asarray(t.as_array()) for t in tasks]), k, axis=0)

    def act(t: int, obs: np.ndarray) -> np.ndarray:
        aug = np.concatenate([obs, task_arr], axis=1).astype(np.float32)
        actions, _ = model.predict(aug, deterministic=deterministic)
        return actions

    try:
        episodes = run_episodes(
            env,
            [t for t in tasks for _ in range(k)],
            [x for s in seeds for x in episode_seeds(s, k)],
            family.horizon,
            act,
            family.action_mapping(env.single_action_space),
        )
    finally:
        env.close()
    total = np.zeros(len(tasks) * k)
    for rewards_t in episodes.rewards:  # summed step by step, in float64
        total += rewards_t
    return total.reshape(len(tasks), k).mean(axis=1)
