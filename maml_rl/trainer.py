"""One MAML meta-iteration (Finn et al. 2017, Algorithm 3): sample tasks, adapt on K
rollouts each, sample post-update rollouts, meta-update with the outer optimiser ``algorithm``
names (:mod:`maml_rl.meta_optimizers`: TRPO, or the clipped meta-steps of MAML-PPO and ProMP).

:class:`MAMLTrainer` owns the policy (theta), Meta-SGD's learned inner step sizes beside it
(rho, or None), the sampler and the meta-optimiser of a run and performs iterations
(:meth:`MAMLTrainer.advance`), built from the config by :func:`make_meta_policy` and
:func:`make_sampler`; starting, resuming, logging and checkpointing a run around it is
:mod:`maml_rl.run`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from maml_rl.batch import EpisodeBatch, LossInputs, episode_success
from maml_rl.checkpoint import check_training_state, numpy_rng_from_plain, numpy_rng_to_plain
from maml_rl.config import TrainConfig
from maml_rl.family import TaskFamily
from maml_rl.inner_loop import batch_loss_inputs
from maml_rl.meta_optimizers import MetaOptimizer, StepResult, make_meta_optimizer
from maml_rl.meta_sgd import InnerStepSizes, MetaPolicy
from maml_rl.policy import MLPPolicy, make_mlp_policy
from maml_rl.resources import check_memory
from maml_rl.sampler import Sampler, make_sampler
from maml_rl.seeding import FISHER, INNER, POST_UPDATE, derive_seed
from maml_rl.settings import (
    AdvantageSettings,
    MetaLearnerSettings,
    PolicySettings,
    SamplerSettings,
)


def make_policy(family: TaskFamily, settings: PolicySettings) -> MLPPolicy:
    """A fresh MLP policy for the family's 1-D Box observations, of the class its action space
    takes (:func:`~maml_rl.policy.make_mlp_policy`): Gaussian for a 1-D Box (``init_std``),
    categorical for a Discrete (``init_std`` ignored). A space no policy takes raises one
    ValueError naming the family's env id."""
    obs_space = family.observation_space
    if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
        raise ValueError(f"{family.env_id}: need a 1-D Box observation space, got {obs_space}")
    try:
        return make_mlp_policy(
            obs_space.shape[0],
            family.action_space,
            settings.hidden_sizes,
            settings.nonlinearity,
            settings.init_std,
        )
    except ValueError as err:
        raise ValueError(f"{family.env_id}: {err}") from None


def make_meta_policy(family: TaskFamily, config: TrainConfig) -> MetaPolicy:
    """A fresh policy (:func:`make_policy`) and, with ``meta_sgd``, Meta-SGD's learned inner
    step sizes beside it, all starting at ``inner_lr``."""
    policy = make_policy(family, config.part(PolicySettings))
    return MetaPolicy.fresh(policy, config.inner_lr if config.meta_sgd else None)


@dataclass
class IterationResult:
    """Numbers of one meta-iteration."""

    pre_returns: np.ndarray  # [M, K] returns before adaptation
    post_returns: np.ndarray  # [M, K] returns after the inner steps
    meta_step: StepResult
    """The meta-optimiser's result (its :meth:`~maml_rl.meta_optimizers.StepResult.log_items`
    say what it logs)."""
    env_steps: int
    timings: dict[str, float]
    """Seconds per phase: sampling, advantages, adaptation, meta_step."""
    iteration_s: float = 0.0
    """Wall seconds of the whole iteration."""
    pre_success: np.ndarray | None = None
    """[M, K] 1.0 for episodes before adaptation that succeeded at some step, when the env
    reports ``info["success"]`` (Meta-World), else None."""
    post_success: np.ndarray | None = None
    """[M, K] the same after the inner steps."""

    @property
    def success_rates(self) -> tuple[float, float] | None:
        """(before, after adaptation) fraction of successful episodes, or None."""
        if self.pre_success is None or self.post_success is None:
            return None
        return float(self.pre_success.mean()), float(self.post_success.mean())


class Timer:
    """Accumulates wall time per named phase."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


class MAMLTrainer:
    """Owns the policy (theta), the learned inner step sizes (rho; ``inner_step_sizes``, None
    without ``meta_sgd``), the sampler and the meta-optimiser of one run.

    Args:
        config: a validated :class:`TrainConfig`.
        sampler: a :class:`Sampler`; None builds the one ``config.sampler`` names.
    """

    def __init__(self, config: TrainConfig, sampler: Sampler | None = None) -> None:
        self.config = config
        self.family = TaskFamily.from_config(config)  # fails early for no task family
        if config.torch_threads:
            torch.set_num_threads(config.torch_threads)
        self.device = torch.device(config.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("device=cuda was asked for but torch sees no CUDA device")
        check_memory(config, self.family, self.device)  # a run too big: one line, not OOM
        torch.manual_seed(config.seed)
        meta_policy = make_meta_policy(self.family, config).to(self.device)
        self.policy: MLPPolicy = meta_policy.policy
        self.inner_step_sizes: InnerStepSizes | None = meta_policy.step_sizes
        if sampler is None:
            sampler = make_sampler(self.family, self.policy, config.part(SamplerSettings))
        self.sampler = sampler
        self.meta_optimizer: MetaOptimizer = make_meta_optimizer(
            self.policy,
            config.part(MetaLearnerSettings),
            config.num_inner_steps,
            self.inner_step_sizes,
        )
        self.advantages = config.part(AdvantageSettings)
        self.iteration = 0  # completed meta-iterations
        self.env_steps = 0

    @property
    def meta_policy(self) -> MetaPolicy:
        """theta and rho together: what a checkpoint's ``policy`` entry holds."""
        return MetaPolicy(self.policy, self.inner_step_sizes)

    # -- one meta-iteration ------------------------------------------------------------------
    def sample_tasks(self, iteration: int) -> list[Any]:
        return self.family.training_tasks(self.config.seed, iteration, self.config.meta_batch_size)

    def _to_loss_inputs(self, batch: EpisodeBatch, what: str) -> LossInputs:
        """Advantages and loss inputs of ``batch``; :class:`UnusableBatchError` naming ``what``
        (the iteration and the batch) when its rewards or advantages cannot be learned from."""
        return batch_loss_inputs(batch, self.advantages, what).to(self.device)

    def run_iteration(self, iteration: int) -> IterationResult:
        """One meta-iteration (Finn et al. 2017, Algorithm 3), top to bottom: the tasks T_i;
        for each inner step j, sample D_ij with theta'_i after j steps, its advantages, and
        theta'_i re-adapted from theta through D_i0..D_ij; the post-update batch D'_i with the
        adapted theta'_i; the meta-optimiser's step on (D_ij, D'_i). Returns its numbers."""
        c = self.config
        timer = Timer()
        name = f"iteration {iteration + 1}"  # of the batches, in errors
        tasks = self.sample_tasks(iteration)
        adaptation = self.meta_optimizer.adaptation
        params = self.policy.params()
        inner_batches: list[EpisodeBatch] = []
        inner_data: list[LossInputs] = []
        for j in range(c.num_inner_steps):
            seed = derive_seed(c.seed, iteration, INNER, j)
            with timer("sampling"):
                inner_batches.append(self.sampler.sample(tasks, params, c.episodes_per_task, seed))
            with timer("advantages"):
                inner_data.append(
                    self._to_loss_inputs(inner_batches[-1], f"{name}, inner step {j + 1} batch")
                )
            with timer("adaptation"):
                params = adaptation.adapt_detached(inner_data)
        with timer("sampling"):
            seed = derive_seed(c.seed, iteration, POST_UPDATE)
            post_update = self.sampler.sample(tasks, params, c.episodes_per_task, seed)
        with timer("advantages"):
            post_update_data = self._to_loss_inputs(post_update, f"{name}, post-update batch")
        with timer("meta_step"):
            generator = torch.Generator().manual_seed(derive_seed(c.seed, iteration, FISHER))
            result = self.meta_optimizer.step(inner_data, post_update_data, generator)
        pre_update = inner_batches[0] if inner_batches else post_update
        # with no inner step the policy itself was sampled: pre- and post-update coincide
        pre_returns = pre_update.episode_returns.numpy()
        post_returns = post_update.episode_returns.numpy()
        steps = sum(b.num_steps for b in (*inner_batches, post_update))
        pre_success, post_success = (episode_success(b) for b in (pre_update, post_update))
        return IterationResult(
            pre_returns,
            post_returns,
            result,
            steps,
            timer.seconds,
            pre_success=None if pre_success is None else pre_success.numpy(),
            post_success=None if post_success is None else post_success.numpy(),
        )

    def advance(self) -> IterationResult:
        """Run the next iteration and count it; an iteration that fails leaves theta, rho (and
        the meta-optimiser's state) as they were."""
        snapshot = {k: v.detach().clone() for k, v in self.meta_policy.state_dict().items()}
        optimizer_snapshot = self.meta_optimizer.state_dict()
        start = time.perf_counter()
        try:
            result = self.run_iteration(self.iteration)
        except BaseException:
            self.meta_policy.load_state_dict(snapshot)  # drop the half-done iteration
            self.meta_optimizer.load_state_dict(optimizer_snapshot)
            raise
        self.iteration += 1
        self.env_steps += result.env_steps
        result.iteration_s = time.perf_counter() - start
        return result

    # -- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = {
            "format": 2,  # 2: the numpy RNG state as a tensor and plain data
            "policy": {k: v.detach().cpu() for k, v in self.meta_policy.state_dict().items()},
            "iteration": self.iteration,
            "env_steps": self.env_steps,
            "config": self.config.to_dict(),
            "torch_rng": torch.get_rng_state(),
            "numpy_rng": numpy_rng_to_plain(np.random.get_state()),
        }
        optimizer_state = self.meta_optimizer.state_dict()
        if optimizer_state:  # e.g. the clipped meta-steps' Adam moments and eta (none for TRPO)
            state["meta_optimizer"] = optimizer_state
        return state

    def load_state_dict(self, state: dict[str, Any], source: Any = "the checkpoint") -> None:
        """Restore :meth:`state_dict`'s state; first checks all of it against this trainer's
        policy, step sizes and meta-step (:func:`~maml_rl.checkpoint.check_training_state`),
        raising :class:`~maml_rl.errors.CheckpointError` naming ``source`` before anything
        changes."""
        meta_policy = self.meta_policy
        check_training_state(state, meta_policy, source, bool(self.meta_optimizer.state_dict()))
        meta_policy.load_state_dict(state["policy"])
        self.iteration = int(state["iteration"])
        self.env_steps = int(state["env_steps"])
        torch.set_rng_state(state["torch_rng"])
        np.random.set_state(numpy_rng_from_plain(state["numpy_rng"]))
        if "meta_optimizer" in state:
            self.meta_optimizer.load_state_dict(state["meta_optimizer"])

    def close(self) -> None:
        self.sampler.close()


__all__: Sequence[str] = [
    "IterationResult",
    "MAMLTrainer",
    "make_meta_policy",
    "make_policy",
    "make_sampler",
]
