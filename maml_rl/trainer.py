"""The MAML-TRPO training loop (Finn et al. 2017, Algorithm 3): sample tasks, adapt on K
rollouts each, sample post-update rollouts, meta-update with TRPO; log, checkpoint, resume."""

from __future__ import annotations

import importlib
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import yaml

from maml_rl.advantages import checked_advantages
from maml_rl.batch import EpisodeBatch, LossInputs, loss_inputs
from maml_rl.checkpoint import (
    CHECKPOINT_NAME,
    load_checkpoint,
    numpy_rng_from_plain,
    numpy_rng_to_plain,
    save_checkpoint,
)
from maml_rl.config import TrainConfig, from_dict
from maml_rl.files import (
    LOCK_NAME,
    atomic_write_text,
    lock_run_folder,
    remove_stale_temporaries,
)
from maml_rl.meta_learner import MetaLearner
from maml_rl.monitor import ITERATION_KEY, log_config, make_logger, truncate_progress
from maml_rl.policy import GaussianMLPPolicy
from maml_rl.sampler import (
    Sampler,
    VectorSampler,
    import_user_module,
    make_family_env,
    resolve_env_id,
)
from maml_rl.settings import MetaLearnerSettings
from maml_rl.trpo import TRPOResult

CONFIG_NAME = "config.yaml"
RESUMABLE_KEYS = frozenset(
    {
        "num_iterations",
        "checkpoint_every",
        "keep_checkpoints",
        "progress_bar",
        "device",
        "num_threads",
        "torch_threads",
        # the sampling back-end gives the same batches, so a run may move on or off a cluster
        "sampler",
        "ray_address",
        "num_workers",
        "ray_max_retries",
        "ray_timeout_s",
    }
)


def derive_seed(*entropy: int) -> int:
    """A 32-bit seed from (run seed, iteration, purpose, ...) via numpy's SeedSequence."""
    return int(np.random.SeedSequence(list(entropy)).generate_state(1)[0])


# purposes mixed into derived seeds
_TASKS, _INNER, _VALID, _FISHER = 0, 1, 2, 3


def prepare_env(config: TrainConfig) -> str:
    """Import what registers the family and return the resolved Gymnasium id."""
    if config.env_import:
        import_user_module(config.env_import, "env_import module")
    importlib.import_module("maml_envs")  # the built-in families
    return resolve_env_id(config.env_id)


def make_policy(env: gym.Env, config: TrainConfig) -> GaussianMLPPolicy:
    obs_space, act_space = env.observation_space, env.action_space
    if not isinstance(act_space, gym.spaces.Box) or len(act_space.shape) != 1:
        raise ValueError(f"{config.env_id}: need a 1-D Box action space, got {act_space}")
    if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
        raise ValueError(f"{config.env_id}: need a 1-D Box observation space, got {obs_space}")
    return GaussianMLPPolicy(
        obs_space.shape[0],
        act_space.shape[0],
        config.hidden_sizes,
        config.nonlinearity,
        config.init_std,
    )


@dataclass
class IterationResult:
    """Numbers of one meta-iteration."""

    pre_returns: np.ndarray  # [M, K] returns before adaptation
    post_returns: np.ndarray  # [M, K] returns after the inner steps
    trpo: TRPOResult
    env_steps: int
    timings: dict[str, float]


class Timer:
    """Accumulates wall time per named phase."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


class MAMLTrainer:
    """Owns the policy, sampler and meta-learner of one run.

    Args:
        config: a validated :class:`TrainConfig`.
        sampler: a :class:`Sampler`; None builds a :class:`VectorSampler`.
    """

    def __init__(self, config: TrainConfig, sampler: Sampler | None = None) -> None:
        self.config = config
        self.env_id = prepare_env(config)
        if config.torch_threads:
            torch.set_num_threads(config.torch_threads)
        self.device = torch.device(config.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("device=cuda was asked for but torch sees no CUDA device")
        self.family = make_family_env(self.env_id, config.env_kwargs).unwrapped
        if not hasattr(self.family, "sample_tasks"):
            raise ValueError(
                f"{self.env_id} is not a task family: its env has no sample_tasks(n, rng)"
            )
        torch.manual_seed(config.seed)
        self.policy = make_policy(self.family, config).to(self.device)
        if sampler is not None:
            self.sampler = sampler
        elif config.sampler == "ray":
            from maml_rl.ray_sampler import RaySampler

            self.sampler = RaySampler(
                config.env_id,
                self.policy,
                config.env_kwargs,
                config.num_threads,
                config.max_episode_steps,
                normalize_actions=config.normalize_actions,
                num_workers=config.num_workers,
                address=config.ray_address,
                max_retries=config.ray_max_retries,
                timeout_s=config.ray_timeout_s,
                imports=["maml_envs", *([config.env_import] if config.env_import else [])],
            )
        else:
            self.sampler = VectorSampler.from_config(self.env_id, self.policy, config)
        self.learner = MetaLearner(self.policy, config.part(MetaLearnerSettings))
        self.iteration = 0  # completed meta-iterations
        self.env_steps = 0

    # -- one meta-iteration ------------------------------------------------------------------
    def sample_tasks(self, iteration: int) -> list[Any]:
        rng = np.random.default_rng(derive_seed(self.config.seed, iteration, _TASKS))
        return list(self.family.sample_tasks(self.config.meta_batch_size, rng))

    def _to_loss_inputs(self, batch: EpisodeBatch, iteration: int, what: str) -> LossInputs:
        """Advantages and loss inputs of ``batch``; :class:`UnusableBatchError` (naming the
        iteration and the batch) when its rewards or advantages cannot be learned from."""
        c = self.config
        what = f"iteration {iteration + 1}, {what} batch"
        adv = checked_advantages(batch, c.gamma, c.gae_lambda, c.normalize_advantages, what)
        return loss_inputs(batch, adv).to(self.device)

    def run_iteration(self, iteration: int) -> IterationResult:
        """Sample, adapt and meta-update once; returns the iteration's numbers."""
        c = self.config
        timer = Timer()
        tasks = self.sample_tasks(iteration)
        params = self.policy.params()
        inner_data: list[LossInputs] = []
        pre_returns = None
        steps = 0
        for j in range(c.num_inner_steps):
            with timer("sampling"):
                batch = self.sampler.sample(
                    tasks, params, c.episodes_per_task, derive_seed(c.seed, iteration, _INNER, j)
                )
            steps += batch.num_steps
            if pre_returns is None:
                pre_returns = batch.episode_returns.numpy()
            with timer("advantages"):
                inner_data.append(self._to_loss_inputs(batch, iteration, f"inner step {j + 1}"))
            with timer("adaptation"):
                params = {k: v.detach() for k, v in self.learner.adapt(inner_data).items()}
        with timer("sampling"):
            valid = self.sampler.sample(
                tasks, params, c.episodes_per_task, derive_seed(c.seed, iteration, _VALID)
            )
        steps += valid.num_steps
        with timer("advantages"):
            valid_data = self._to_loss_inputs(valid, iteration, "post-update")
        with timer("meta_step"):
            generator = torch.Generator().manual_seed(derive_seed(c.seed, iteration, _FISHER))
            result = self.learner.step(inner_data, valid_data, generator)
        post_returns = valid.episode_returns.numpy()
        if pre_returns is None:  # no inner step: the policy itself was sampled
            pre_returns = post_returns
        return IterationResult(pre_returns, post_returns, result, steps, timer.seconds)

    # -- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "format": 2,  # 2: the numpy RNG state as a tensor and plain data
            "policy": {k: v.detach().cpu() for k, v in self.policy.state_dict().items()},
            "iteration": self.iteration,
            "env_steps": self.env_steps,
            "config": self.config.to_dict(),
            "torch_rng": torch.get_rng_state(),
            "numpy_rng": numpy_rng_to_plain(np.random.get_state()),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.policy.load_state_dict(state["policy"])
        self.iteration = int(state["iteration"])
        self.env_steps = int(state["env_steps"])
        torch.set_rng_state(state["torch_rng"])
        np.random.set_state(numpy_rng_from_plain(state["numpy_rng"]))

    def close(self) -> None:
        self.sampler.close()


def default_run_name(config: TrainConfig) -> str:
    env = config.env_id.split(":")[-1].replace("/", "-")
    return f"{env}__{config.config_name}__{config.seed}__{datetime.now():%Y%m%d-%H%M%S}"


def _log_iteration(logger, trainer: MAMLTrainer, it: IterationResult, wall: float) -> None:
    r = it.trpo
    logger.record(ITERATION_KEY, trainer.iteration)
    logger.record("rollout/pre_return_mean", float(it.pre_returns.mean()))
    logger.record("rollout/pre_return_std", float(it.pre_returns.std()))
    logger.record("rollout/post_return_mean", float(it.post_returns.mean()))
    logger.record("rollout/post_return_std", float(it.post_returns.std()))
    logger.record("train/surrogate_before", r.loss_before)
    logger.record("train/surrogate_after", r.loss_after)
    logger.record("train/kl", r.kl)
    logger.record("train/step_fraction", r.step_fraction)
    logger.record("train/line_search_steps", r.line_search_steps)
    logger.record("train/cg_residual", r.cg_residual)
    logger.record("train/step_accepted", int(r.accepted))
    if not r.accepted:
        logger.record("train/rejected_reason", r.reason, exclude=("csv",))
    logger.record("time/env_steps", trainer.env_steps)
    for name in ("sampling", "advantages", "adaptation", "meta_step"):
        logger.record(f"time/{name}_s", it.timings.get(name, 0.0))
    for name, seconds in r.seconds.items():
        logger.record(f"time/meta_step_{name}_s", seconds)
    logger.record("time/iteration_s", wall)
    logger.dump(trainer.iteration)


def _sigterm_as_interrupt() -> Any:
    """Make SIGTERM (a scheduler's stop) raise KeyboardInterrupt, so the run checkpoints as on
    Ctrl-C; returns the previous handler (None when not in the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    return signal.signal(signal.SIGTERM, handler)


def train(
    config: TrainConfig | None,
    run_dir: str | Path | None = None,
    resume: bool = False,
    stdout: bool = True,
    on_iteration: Callable[[MAMLTrainer, IterationResult], None] | None = None,
    resume_overrides: dict[str, Any] | None = None,
) -> Path:
    """Train (or resume, with ``resume=True`` and an existing ``run_dir``); returns the run dir.

    Checkpoints (``checkpoint.pt``) are written atomically every ``checkpoint_every``
    iterations, at the end, on Ctrl-C or SIGTERM and on errors (the last completed iteration; the
    exception is re-raised). A resumed run may change only :data:`RESUMABLE_KEYS`.

    The run folder is locked for the whole call (:func:`maml_rl.files.lock_run_folder`): a second
    training or resume into it raises :class:`~maml_rl.errors.RunFolderBusy`. Temporary files of
    writes a kill interrupted are removed first. A folder this call created is removed again
    when the run stops before completing its first iteration (nothing to keep or resume).
    """
    if resume:
        if run_dir is None:
            raise ValueError("resume needs the run directory")
        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise FileNotFoundError(f"no run folder at {run_dir}")
    else:
        if config is None:
            raise ValueError("train needs a config (or resume=True and a run folder)")
        run_dir = (
            Path(run_dir)
            if run_dir
            else Path(config.log_dir) / (config.run_name or default_run_name(config))
        )
    created = not run_dir.exists()
    try:
        with lock_run_folder(run_dir):
            remove_stale_temporaries(run_dir)
            return _train_locked(
                config, run_dir, resume, stdout, on_iteration, resume_overrides, created
            )
    finally:
        if created:
            remove_unused_run_folder(run_dir)


_RUN_FILES = ("checkpoint.pt", CONFIG_NAME, "progress.csv", "events.out.tfevents.*")


def remove_unused_run_folder(run_dir: Path) -> None:
    """Delete a run folder that holds no completed iteration: only this package's own files
    (lock, config, empty log, iteration-0 checkpoint); anything else keeps the folder."""
    if not run_dir.is_dir():
        return
    if (run_dir / CHECKPOINT_NAME).is_file() and _iteration_of(run_dir) > 0:
        return
    ours = [p for pattern in _RUN_FILES for p in run_dir.glob(pattern)]
    others = set(run_dir.iterdir()) - set(ours) - {run_dir / LOCK_NAME}
    if others:
        return
    for path in [*ours, run_dir / LOCK_NAME]:
        path.unlink(missing_ok=True)
    run_dir.rmdir()


def _iteration_of(run_dir: Path) -> int:
    try:
        return int(load_checkpoint(run_dir)["iteration"])
    except Exception:
        return 1  # unreadable: not ours to delete


def _train_locked(
    config: TrainConfig | None,
    run_dir: Path,
    resume: bool,
    stdout: bool,
    on_iteration: Callable[[MAMLTrainer, IterationResult], None] | None,
    resume_overrides: dict[str, Any] | None,
    created: bool,
) -> Path:
    """:func:`train` once the run folder is locked."""
    if resume:
        state = load_checkpoint(run_dir / CHECKPOINT_NAME)
        overrides = dict(resume_overrides or {})
        fixed = sorted(set(overrides) - RESUMABLE_KEYS)
        if fixed:
            raise ValueError(f"cannot change {fixed} when resuming; only {sorted(RESUMABLE_KEYS)}")
        config = from_dict(overrides, from_dict(state["config"])).validate()
    else:
        assert config is not None
        if (run_dir / CHECKPOINT_NAME).exists():
            raise FileExistsError(f"{run_dir} already holds a run; use --resume {run_dir}")
        state = None
    trainer = MAMLTrainer(config)
    if state is not None:
        trainer.load_state_dict(state)
        kept = truncate_progress(run_dir, trainer.iteration)
        if kept < trainer.iteration:
            print(
                f"warning: {run_dir / 'progress.csv'} holds {kept} of the {trainer.iteration} "
                "completed iterations; the training continues, later rows are appended",
                file=sys.stderr,
            )
    else:
        atomic_write_text(run_dir / CONFIG_NAME, yaml.safe_dump(config.to_dict(), sort_keys=True))
    logger = make_logger(
        run_dir, stdout=stdout, resume=state is not None, progress_bar=config.progress_bar
    )
    if state is None:
        log_config(logger, config.to_dict())
    ckpt = run_dir / CHECKPOINT_NAME
    progress = None
    if config.progress_bar:
        from tqdm.auto import tqdm

        progress = tqdm(
            total=config.num_iterations,
            initial=trainer.iteration,
            desc="meta-iter",
            dynamic_ncols=True,
        )
    previous_sigterm = _sigterm_as_interrupt()
    try:
        while trainer.iteration < config.num_iterations:
            snapshot = {k: v.detach().clone() for k, v in trainer.policy.state_dict().items()}
            start = time.perf_counter()
            try:
                it = trainer.run_iteration(trainer.iteration)
            except BaseException:
                trainer.policy.load_state_dict(snapshot)  # drop the half-done iteration
                raise
            trainer.iteration += 1
            trainer.env_steps += it.env_steps
            _log_iteration(logger, trainer, it, time.perf_counter() - start)
            if on_iteration is not None:
                on_iteration(trainer, it)
            if progress is not None:
                progress.set_postfix(
                    pre=f"{it.pre_returns.mean():.1f}",
                    post=f"{it.post_returns.mean():.1f}",
                    refresh=False,
                )
                progress.update(1)
            if trainer.iteration % config.checkpoint_every == 0:
                state = trainer.state_dict()
                save_checkpoint(ckpt, state)
                if config.keep_checkpoints:
                    name = f"iteration_{trainer.iteration:05d}.pt"
                    save_checkpoint(run_dir / "checkpoints" / name, state)
            if not math.isfinite(float(it.post_returns.mean())):
                raise FloatingPointError("post-adaptation return is not finite")
    except BaseException as err:
        if progress is not None:
            progress.close()
            progress = None
        _checkpoint_on_stop(ckpt, trainer, err, fresh=created and trainer.iteration == 0)
        raise
    finally:
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)
        if progress is not None:
            progress.close()
        logger.close()
        trainer.close()
    save_checkpoint(ckpt, trainer.state_dict())
    return run_dir


def _checkpoint_on_stop(ckpt: Path, trainer: MAMLTrainer, err: BaseException, fresh: bool) -> None:
    """Save the last completed iteration when a run stops early and say so on stderr; a failure
    to save (full or read-only disk) is reported without hiding ``err``."""
    what = "interrupted" if isinstance(err, KeyboardInterrupt) else "stopped by an error"
    if fresh:
        print(f"\n{what} before the first iteration completed: nothing to keep", file=sys.stderr)
        return
    try:
        save_checkpoint(ckpt, trainer.state_dict())
    except OSError as save_err:
        print(
            f"\n{what}; the checkpoint of iteration {trainer.iteration} could not be saved: "
            f"{save_err} (the last periodic checkpoint in {ckpt.parent} stays)",
            file=sys.stderr,
        )
        return
    print(
        f"\n{what}: checkpoint of iteration {trainer.iteration} saved in {ckpt.parent}",
        file=sys.stderr,
    )


def load_policy(path: str | Path) -> tuple[GaussianMLPPolicy, TrainConfig]:
    """The trained policy and config of a run folder or checkpoint file."""
    state = load_checkpoint(path)
    config = from_dict(state["config"]).validate()
    env_id = prepare_env(config)
    env = make_family_env(env_id, config.env_kwargs)
    policy = make_policy(env, config)
    policy.load_state_dict(state["policy"])
    env.close()
    return policy, config


__all__: Sequence[str] = ["MAMLTrainer", "load_policy", "train"]
