"""Every hyperparameter, declared once: small settings groups with their defaults and meanings.

Each group is a dataclass of the keys one part of the code reads. The config
(:class:`~maml_rl.config.TrainConfig`) is the union of all groups: its flat keys are the YAML,
``--set`` and checkpoint keys, and ``config.part(Group)`` hands one part its group, e.g.
``config.part(MetaLearnerSettings)`` for the meta-learner. Nothing here imports torch or an
algorithm module: the choice lists the config validates against live here too.

Groups (who receives them):

* :class:`FamilySettings`: which task family, resolved once into a
  :class:`~maml_rl.family.TaskFamily` (sampler, evaluation, comparisons, video).
* :class:`PolicySettings`: the policy network (:func:`~maml_rl.trainer.make_policy`).
* :class:`BatchSettings`: tasks and episodes per meta-iteration, inner steps (trainer).
* :class:`AdvantageSettings`: discount, GAE, normalisation (every "sample, advantages, step").
* :class:`InnerLoopSettings`, :class:`TRPOSettings` and :class:`ClippedSettings`, together
  :class:`MetaLearnerSettings` (:class:`~maml_rl.meta_learner.MetaLearner` for ``maml-trpo``,
  :class:`~maml_rl.clipped_meta.ClippedMetaLearner` for ``maml-ppo`` and ``promp``).
* :class:`SamplerSettings`: the sampling back-end (:func:`~maml_rl.trainer.make_sampler`).
* :class:`RunSettings`: seed, iterations, device, checkpoints, logging (:mod:`maml_rl.run`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ALGORITHMS = ("maml-trpo", "maml-ppo", "promp")
"""Outer optimisers of the meta-step (the ``algorithm`` key)."""
ALGORITHM_PAPERS = {
    "maml-trpo": "TRPO through the adaptation (Finn et al. 2017, Algorithm 3; Schulman et al. "
    "2015), maml_rl.meta_learner",
    "maml-ppo": "PPO's clipped surrogate through the adaptation, several Adam steps per batch "
    "(Schulman et al. 2017; garage's MAMLPPO), maml_rl.clipped_meta",
    "promp": "ProMP: the clipped surrogate, the LVC inner objective and a KL penalty on the inner "
    "step (Rothfuss et al., ICLR 2019), maml_rl.clipped_meta",
}
"""Each algorithm with its paper and module (``maml-rl train --help``)."""
INNER_OBJECTIVES = ("reinforce", "lvc", "dice")
"""Inner-loop losses (:mod:`maml_rl.adaptation`)."""
HVP_METHODS = ("gauss_newton", "exact")
"""KL-Hessian products of the meta-step's conjugate gradient (:mod:`maml_rl.meta_learner`)."""
NONLINEARITIES = ("relu", "tanh")
"""Hidden-layer activations of the policy (:mod:`maml_rl.policy`)."""
SAMPLERS = ("vector", "ray")
"""Sampling back-ends (:func:`maml_rl.trainer.make_sampler`)."""


@dataclass
class FamilySettings:
    """The task family: which environment, with which arguments, horizon and action mapping."""

    env_id: str = "MAML/Navigation2D-v0"
    """Gymnasium id of the task family; ``module:Id`` imports ``module`` first (custom families)."""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments for the environment (e.g. task ranges)."""
    env_import: str | None = None
    """A module to import before making the env (registers a user's family)."""
    normalize_actions: bool = True
    """The policy acts in [-1, 1]^d, mapped onto the env's action bounds (rllab's ``normalize``,
    used by the authors' scripts: for 2D navigation, policy std 1 means velocity noise 0.1).
    Box action spaces only: ignored for a Discrete one (the categorical policy's index is the
    action)."""
    max_episode_steps: int | None = None
    """Horizon H; None: the id's registered max_episode_steps (100 navigation, 200 locomotion)."""


@dataclass
class RunSettings:
    """One run: its seed and length, where it computes, checkpoints and logs."""

    seed: int = 1
    """Drives task sampling, environments and torch; the same seed gives the same run."""
    num_iterations: int = 500
    """Number of meta-iterations (meta-updates)."""
    device: str = "cpu"
    """Learner device (``cpu`` or ``cuda``); sampling always runs on the CPU."""
    torch_threads: int | None = None
    """torch intra-op threads (None: torch's default, one per core). On a machine shared with
    other jobs use fewer threads than the idle cores: torch's workers wait for each other at
    every operation, and a descheduled one stalls the rest (on 2 cores beside one busy process,
    a navigation-sized meta-step took 1.4-1.9 s with 2 threads against 0.7-0.9 s with 1)."""
    checkpoint_every: int = 10
    """Write a checkpoint every this many iterations (and at the end and on Ctrl-C)."""
    keep_checkpoints: bool = False
    """Also keep a copy of every periodic checkpoint as ``checkpoints/iteration_NNNNN.pt``."""
    log_dir: str = "runs"
    """Parent folder of run directories."""
    run_name: str | None = None
    """Run directory name; None: ``<env>__<config>__<seed>__<time>``."""
    config_name: str = "custom"
    """Name of the preset or file the config came from (used in the run name)."""
    progress_bar: bool = True
    """Show a progress bar with pre-/post-adaptation returns."""


@dataclass
class BatchSettings:
    """How much is sampled per meta-iteration."""

    meta_batch_size: int = 20
    """Tasks per meta-iteration (paper: 20 navigation, 40 locomotion)."""
    episodes_per_task: int = 20
    """K, trajectories per task for each inner step and for the post-update batch."""
    num_inner_steps: int = 1
    """Policy-gradient adaptation steps in training (each with fresh rollouts); 0 trains one
    policy on all tasks jointly (multi-task TRPO, the paper's "pretrained" baseline)."""


@dataclass
class InnerLoopSettings:
    """The inner loop: theta'_i = theta - alpha * grad L_i(theta) per inner step."""

    inner_lr: float = 0.1
    """Inner step size alpha."""
    inner_objective: str = "reinforce"
    """``reinforce`` (paper), ``lvc`` (ProMP's low-variance curvature objective, Rothfuss et al.
    2019) or ``dice`` (Foerster et al. 2018: the inner Hessian also keeps the dependence between
    an episode's steps; the curvature needs whole episodes, so ``cg_subsample`` must be 1)."""
    first_order: bool = False
    """Drop second derivatives through the inner step (first-order MAML)."""
    meta_sgd: bool = False
    """Meta-SGD (Li et al. 2017): learn one inner step size per policy parameter, alpha =
    exp(rho) > 0 starting at inner_lr, with theta by the outer optimiser; saved with the policy
    and used by evaluation (step j of the test schedule takes alpha * schedule_j / inner_lr).
    With maml-trpo the meta-step is taken in (theta, rho), by the hand-written curvature passes
    (d theta'/d rho = -alpha o grad L per inner step) unless hvp=exact; :mod:`maml_rl.meta_sgd`."""


@dataclass
class PolicySettings:
    """The MLP policy: Gaussian for a Box action space, categorical for a Discrete one."""

    hidden_sizes: list[int] = field(default_factory=lambda: [100, 100])
    """Policy MLP hidden layer widths."""
    nonlinearity: str = "relu"
    """``relu`` or ``tanh``."""
    init_std: float = 1.0
    """Initial action standard deviation of the Gaussian policy; ignored for a Discrete action
    space (the categorical policy has no standard deviation)."""


@dataclass
class AdvantageSettings:
    """Advantages of a batch: discounted returns minus the linear baseline, GAE, normalised."""

    gamma: float = 0.99
    """Discount factor."""
    gae_lambda: float = 1.0
    """GAE lambda (1.0: Monte-Carlo returns minus the linear baseline)."""
    normalize_advantages: bool = True
    """Normalise advantages per task (mean 0, std 1 over valid steps)."""


@dataclass
class TRPOSettings:
    """The TRPO meta-step: trust region, conjugate gradient, line search."""

    max_kl: float = 0.01
    """TRPO trust region delta on the mean KL."""
    cg_iters: int = 10
    """Conjugate-gradient iterations."""
    cg_damping: float = 1e-5
    """Damping added to the KL Hessian."""
    ls_backtrack_ratio: float = 0.8
    """Line-search step shrink factor."""
    ls_max_steps: int = 15
    """Line-search trials."""
    cg_subsample: float = 1.0
    """Fraction of samples used in the CG curvature products (1.0: all; < 1: subsampled
    Fisher, faster, an approximation whose effect on learning is reported in the README)."""
    hvp: str = "gauss_newton"
    """KL-Hessian products for CG: ``gauss_newton`` (J^T F J, equal at the current point, by
    hand-written passes through the policy network, with the meta-gradient; :mod:`maml_rl.fisher`)
    or ``exact`` (autograd: double backward of the KL through the second-order adaptation, the
    slower reference)."""


@dataclass
class ClippedSettings:
    """The outer optimiser, and the settings of the clipped meta-steps (``maml-ppo``,
    ``promp``; :mod:`maml_rl.clipped_meta`). Defaults: ProMP's released run scripts
    (Rothfuss et al. 2019, ``run_scripts/pro-mp_run_*.py``)."""

    algorithm: str = "maml-trpo"
    """Outer optimiser: ``maml-trpo`` (Finn et al. 2017: TRPO through the adaptation),
    ``maml-ppo`` (Schulman et al. 2017's clipped surrogate through the adaptation with Adam, as
    garage's MAMLPPO) or ``promp`` (Rothfuss et al. 2019: clipped surrogate, LVC inner
    objective, penalty on the inner step's KL; needs ``inner_objective=lvc``)."""
    clip_eps: float = 0.3
    """Clip range epsilon of the likelihood ratio, maml-ppo and promp (ProMP's run scripts: 0.3;
    ProMP's class default and PPO's paper: 0.2; garage's MAMLPPO: 0.5)."""
    outer_lr: float = 1e-3
    """Adam step size of the clipped meta-steps (ProMP and garage's MAMLPPO: 1e-3)."""
    outer_steps: int = 5
    """Adam steps per meta-batch on the same samples, theta' recomputed through the inner loop
    before each (ProMP: 5; garage's MAMLPPO takes 1)."""
    inner_kl_coef: float = 5e-4
    """promp: initial coefficient eta of the penalty eta * KL(pi_theta_old || pi_theta) on each
    inner step's batch (ProMP's run scripts: 5e-4; its class default: 1e-2)."""
    inner_kl_adaptive: bool = False
    """promp: adapt eta after every meta-step, halved when the inner KL is below
    inner_kl_target / 1.5, doubled above inner_kl_target * 1.5 (ProMP's rule; its run scripts
    keep eta fixed, its class default adapts)."""
    inner_kl_target: float = 0.01
    """promp: the inner KL that the adaptive eta aims at (ProMP: 0.01)."""


@dataclass
class MetaLearnerSettings(ClippedSettings, TRPOSettings, InnerLoopSettings):
    """What the meta-learners receive: the inner loop's, the TRPO meta-step's and the clipped
    meta-steps' settings (the fields of all groups, flat: ``s.inner_lr``, ``s.max_kl``)."""


@dataclass
class SamplerSettings:
    """The sampling back-end; every back-end gives the same batches for the same seed."""

    num_threads: int | None = None
    """Physics threads of the batched env (None: all cores)."""
    sampler: str = "vector"
    """``vector`` (one batched env in this process) or ``ray`` (tasks split over Ray actors;
    ``pip install -e ".[ray]"``); both give the same batches for the same seed."""
    ray_address: str = "local"
    """``sampler=ray``: ``local`` starts Ray in this process; ``auto`` or ``host:port`` joins a
    running cluster (``ray start --head``)."""
    num_workers: int = 2
    """``sampler=ray``: worker actors; each samples a contiguous shard of the meta-batch and
    reserves ``num_threads`` CPUs (1 when null) for its physics."""
    ray_max_retries: int = 3
    """``sampler=ray``: times a shard is re-sampled in one call after its worker died."""
    ray_timeout_s: float = 600.0
    """``sampler=ray``: seconds to wait for a shard (or for workers to start) before the worker
    counts as dead."""


GROUPS: tuple[type, ...] = (
    FamilySettings,
    RunSettings,
    BatchSettings,
    InnerLoopSettings,
    PolicySettings,
    AdvantageSettings,
    TRPOSettings,
    ClippedSettings,
    SamplerSettings,
)
"""Every group, in the order the keys are listed (``maml-rl train --help``)."""
