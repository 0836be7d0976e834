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
* :class:`SamplerSettings`: the sampling back-end (:func:`~maml_rl.sampler.make_sampler`).
* :class:`RunSettings`: seed, iterations, device, checkpoints, logging (:mod:`maml_rl.run`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from dataclasses import MISSING, dataclass, field
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
"""Inner-loop losses, the one list (:mod:`maml_rl.adaptation` implements and checks them)."""
HVP_METHODS = ("gauss_newton", "exact")
"""KL-Hessian products of the meta-step's conjugate gradient (:mod:`maml_rl.meta_learner`)."""
NONLINEARITIES = ("relu", "tanh")
"""Hidden-layer activations of the policy, the one list (:data:`maml_rl.policy.ACTIVATIONS`
maps each name to its torch function)."""
SAMPLERS = ("vector", "ray")
"""Sampling back-ends (:func:`maml_rl.sampler.make_sampler`)."""


MAX_INT = 2**31 - 1
"""Largest value of an integer key (a C int: thread counts, sizes, iterations); ``seed``
takes up to :data:`MAX_SEED`."""
MAX_SEED = 2**32 - 1
"""Largest seed: numpy's legacy seeding (and torch's) take 0 <= seed < 2**32."""


@dataclass(frozen=True)
class Check:
    """A rule on one value that a range or a choice list cannot state, and its wording in the
    error message (``bad value for 'device': 'gpu' (cpu or cuda[:N])``)."""

    holds: Callable[[Any], bool]
    what: str


def is_folder_name(name: Any) -> bool:
    """One folder name: not empty, not '.' or '..', no separator or NUL (so not absolute)."""
    return (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and not any(c in name for c in "/\\\0")
    )


ENV_ID = Check(lambda v: isinstance(v, str) and bool(v), "must be a string")
RAY_ADDRESS = Check(lambda v: isinstance(v, str) and bool(v), "local, auto or a cluster address")
DEVICE = Check(lambda v: bool(re.fullmatch(r"cpu|cuda(:\d{1,4})?", v)), "cpu or cuda[:N]")
FOLDER_NAME = Check(
    is_folder_name, "must be one folder name: not empty, not '.' or '..', no '/', '\\' or NUL"
)
LAYER_WIDTHS = Check(
    lambda v: (
        len(v) > 0
        and all(isinstance(h, int) and not isinstance(h, bool) and 0 < h <= MAX_INT for h in v)
    ),
    "must be a non-empty list of positive integers",
)


def setting(
    default: Any = MISSING,
    *,
    factory: Callable[[], Any] | Any = MISSING,
    low: float | None = None,
    high: float | None = None,
    above: float | None = None,
    below: float | None = None,
    choices: Sequence[str] | None = None,
    check: Check | None = None,
    note: str = "",
    resumable: bool = False,
    doc: str,
) -> Any:
    """A settings field declared with everything said about it: its default (or ``factory``),
    its range (``low <= v``, ``v <= high``, ``above < v``, ``v < below``; None: no bound), its
    ``choices``, another ``check``, a ``note`` added to the range's error message, whether
    :func:`maml_rl.run.resume` may change it (``resumable``) and its meaning (``doc``: the
    ``--help`` line and the docs' config reference are its first sentence). The config's
    ``validate`` and :data:`RESUMABLE_KEYS` are read from this metadata."""
    metadata = {
        "doc": " ".join(doc.split()),
        "low": low,
        "high": high,
        "above": above,
        "below": below,
        "choices": tuple(choices) if choices is not None else None,
        "check": check,
        "note": note,
        "resumable": resumable,
    }
    return field(default=default, default_factory=factory, metadata=metadata)


def has_range(f: dataclasses.Field[Any]) -> bool:
    """Whether field ``f`` declares a bound."""
    return any(f.metadata[k] is not None for k in ("low", "high", "above", "below"))


def in_range(f: dataclasses.Field[Any], value: float) -> bool:
    """``low <= value <= high`` and ``above < value < below`` for the bounds ``f`` declares."""
    m = f.metadata
    return (
        (m["low"] is None or value >= m["low"])
        and (m["high"] is None or value <= m["high"])
        and (m["above"] is None or value > m["above"])
        and (m["below"] is None or value < m["below"])
    )


def range_words(f: dataclasses.Field[Any]) -> str:
    """Field ``f``'s range in words: ``must be an integer >= 1``, ``must be in (0, 1]``,
    ``must be null or an integer >= 1``, ``must be an integer in [0, 4294967295]``."""
    m = f.metadata
    declared = str(f.type)
    kind = "an integer" if declared.removesuffix(" | None") == "int" else "a number"
    lower = (
        (f"[{m['low']}" if m["low"] is not None else f"({m['above']}")
        if (m["low"] is not None or m["above"] is not None)
        else None
    )
    upper = (
        (f"{m['high']}]" if m["high"] is not None else f"{m['below']})")
        if (m["high"] is not None or m["below"] is not None)
        else None
    )
    if lower and upper:
        words = f"{'an integer ' if kind == 'an integer' else ''}in {lower}, {upper}"
    elif lower:
        words = f"{kind} {'>=' if lower[0] == '[' else '>'} {lower[1:]}"
    else:
        words = f"{kind} {'<=' if upper[-1] == ']' else '<'} {upper[:-1]}"
    null = "null or " if declared.endswith(" | None") else ""
    return f"must be {null}{words}" + (f" ({m['note']})" if m["note"] else "")


def field_problem(f: dataclasses.Field[Any], value: Any) -> str | None:
    """What is wrong with ``value`` for field ``f`` by its declared choices, check and range
    (its type already checked), or None; None is always allowed where the type allows it."""
    m = f.metadata
    if value is None:
        return None
    if m["choices"] is not None and value not in m["choices"]:
        return f"one of {list(m['choices'])}"
    if m["check"] is not None and not m["check"].holds(value):
        return m["check"].what
    if has_range(f) and not in_range(f, value):
        return range_words(f)
    return None


@dataclass
class FamilySettings:
    """The task family: which environment, with which arguments, horizon and action mapping."""

    env_id: str = setting(
        "MAML/Navigation2D-v0",
        check=ENV_ID,
        doc="""Gymnasium id of the task family; ``module:Id`` imports ``module`` first (custom
        families).""",
    )
    env_kwargs: dict[str, Any] = setting(  # noqa: RUF009 (a field, like field())
        factory=dict,
        doc="""Keyword arguments for the environment (e.g. task ranges).""",
    )
    env_import: str | None = setting(
        None,
        doc="""A module to import before making the env (registers a user's family).""",
    )
    normalize_actions: bool = setting(
        True,
        doc="""The policy acts in [-1, 1]^d, mapped onto the env's action bounds (rllab's
        ``normalize``, used by the authors' scripts: for 2D navigation, policy std 1 means velocity
        noise 0.1). Box action spaces only: ignored for a Discrete one (the categorical policy's
        index is the action).""",
    )
    max_episode_steps: int | None = setting(
        None,
        low=1,
        doc="""Horizon H; None: the id's registered max_episode_steps (100 navigation, 200
        locomotion).""",
    )


@dataclass
class RunSettings:
    """One run: its seed and length, where it computes, checkpoints and logs."""

    seed: int = setting(
        1,
        low=0,
        high=MAX_SEED,
        doc="""Drives task sampling, environments and torch; the same seed gives the same run.""",
    )
    num_iterations: int = setting(
        500,
        low=1,
        resumable=True,
        doc="""Number of meta-iterations (meta-updates).""",
    )
    device: str = setting(
        "cpu",
        check=DEVICE,
        resumable=True,
        doc="""Learner device (``cpu`` or ``cuda``); sampling always runs on the CPU.""",
    )
    torch_threads: int | None = setting(
        None,
        low=1,
        resumable=True,
        doc="""torch intra-op threads (None: torch's default, one per core). On a machine shared
        with other jobs use fewer threads than the idle cores: torch's workers wait for each other
        at every operation, and a descheduled one stalls the rest (on 2 cores beside one busy
        process, a navigation-sized meta-step took 1.4-1.9 s with 2 threads against 0.7-0.9 s with
        1).""",
    )
    checkpoint_every: int = setting(
        10,
        low=1,
        resumable=True,
        doc="""Write a checkpoint every this many iterations (and at the end and on Ctrl-C).""",
    )
    keep_checkpoints: bool = setting(
        False,
        resumable=True,
        doc="""Also keep a copy of every periodic checkpoint as
        ``checkpoints/iteration_NNNNN.pt``.""",
    )
    log_dir: str = setting(
        "runs",
        doc="""Parent folder of run directories.""",
    )
    run_name: str | None = setting(
        None,
        check=FOLDER_NAME,
        doc="""Run directory name; None: ``<env>__<config>__<seed>__<time>``.""",
    )
    config_name: str = setting(
        "custom",
        check=FOLDER_NAME,
        doc="""Name of the preset or file the config came from (used in the run name).""",
    )
    progress_bar: bool = setting(
        True,
        resumable=True,
        doc="""Show a progress bar with pre-/post-adaptation returns.""",
    )


@dataclass
class BatchSettings:
    """How much is sampled per meta-iteration."""

    meta_batch_size: int = setting(
        20,
        low=1,
        doc="""Tasks per meta-iteration (paper: 20 navigation, 40 locomotion).""",
    )
    episodes_per_task: int = setting(
        20,
        low=1,
        doc="""K, trajectories per task for each inner step and for the post-update batch.""",
    )
    num_inner_steps: int = setting(
        1,
        low=0,
        note="0: multi-task TRPO without adaptation",
        doc="""Policy-gradient adaptation steps in training (each with fresh rollouts); 0 trains one
        policy on all tasks jointly (multi-task TRPO, the paper's "pretrained" baseline).""",
    )


@dataclass
class InnerLoopSettings:
    """The inner loop: theta'_i = theta - alpha * grad L_i(theta) per inner step."""

    inner_lr: float = setting(
        0.1,
        above=0,
        doc="""Inner step size alpha.""",
    )
    inner_objective: str = setting(
        "reinforce",
        choices=INNER_OBJECTIVES,
        doc="""``reinforce`` (paper), ``lvc`` (ProMP's low-variance curvature objective, Rothfuss et
        al. 2019) or ``dice`` (Foerster et al. 2018: the inner Hessian also keeps the dependence
        between an episode's steps; the curvature needs whole episodes, so ``cg_subsample`` must be
        1).""",
    )
    first_order: bool = setting(
        False,
        doc="""Drop second derivatives through the inner step (first-order MAML).""",
    )
    meta_sgd: bool = setting(
        False,
        doc="""Meta-SGD (Li et al. 2017): learn one inner step size per policy parameter, alpha =
        exp(rho) > 0 starting at inner_lr, with theta by the outer optimiser; saved with the policy
        and used by evaluation (step j of the test schedule takes alpha * schedule_j / inner_lr).
        With maml-trpo the meta-step is taken in (theta, rho), by the hand-written curvature passes
        (d theta'/d rho = -alpha o grad L per inner step) unless hvp=exact;
        :mod:`maml_rl.meta_sgd`.""",
    )


@dataclass
class PolicySettings:
    """The MLP policy: Gaussian for a Box action space, categorical for a Discrete one."""

    hidden_sizes: list[int] = setting(  # noqa: RUF009 (a field, like field())
        factory=lambda: [100, 100],
        check=LAYER_WIDTHS,
        doc="""Policy MLP hidden layer widths.""",
    )
    nonlinearity: str = setting(
        "relu",
        choices=NONLINEARITIES,
        doc="""``relu`` or ``tanh``.""",
    )
    init_std: float = setting(
        1.0,
        above=0,
        doc="""Initial action standard deviation of the Gaussian policy; ignored for a Discrete
        action space (the categorical policy has no standard deviation).""",
    )


@dataclass
class AdvantageSettings:
    """Advantages of a batch: discounted returns minus the linear baseline, GAE, normalised."""

    gamma: float = setting(
        0.99,
        above=0,
        high=1,
        doc="""Discount factor.""",
    )
    gae_lambda: float = setting(
        1.0,
        low=0,
        high=1,
        doc="""GAE lambda (1.0: Monte-Carlo returns minus the linear baseline).""",
    )
    normalize_advantages: bool = setting(
        True,
        doc="""Normalise advantages per task (mean 0, std 1 over valid steps).""",
    )


@dataclass
class TRPOSettings:
    """The TRPO meta-step: trust region, conjugate gradient, line search."""

    max_kl: float = setting(
        0.01,
        above=0,
        doc="""TRPO trust region delta on the mean KL.""",
    )
    cg_iters: int = setting(
        10,
        low=1,
        doc="""Conjugate-gradient iterations.""",
    )
    cg_damping: float = setting(
        1e-5,
        low=0,
        doc="""Damping added to the KL Hessian.""",
    )
    ls_backtrack_ratio: float = setting(
        0.8,
        above=0,
        below=1,
        doc="""Line-search step shrink factor.""",
    )
    ls_max_steps: int = setting(
        15,
        low=1,
        doc="""Line-search trials.""",
    )
    cg_subsample: float = setting(
        1.0,
        above=0,
        high=1,
        doc="""Fraction of samples used in the CG curvature products (1.0: all; < 1: subsampled
        Fisher, faster, an approximation whose effect on learning is reported in the README).""",
    )
    hvp: str = setting(
        "gauss_newton",
        choices=HVP_METHODS,
        doc="""KL-Hessian products for CG: ``gauss_newton`` (J^T F J, equal at the current point, by
        hand-written passes through the policy network, with the meta-gradient;
        :mod:`maml_rl.fisher`) or ``exact`` (autograd: double backward of the KL through the
        second-order adaptation, the slower reference).""",
    )


@dataclass
class ClippedSettings:
    """The outer optimiser, and the settings of the clipped meta-steps (``maml-ppo``,
    ``promp``; :mod:`maml_rl.clipped_meta`). Defaults: ProMP's released run scripts
    (Rothfuss et al. 2019, ``run_scripts/pro-mp_run_*.py``)."""

    algorithm: str = setting(
        "maml-trpo",
        choices=ALGORITHMS,
        doc="""Outer optimiser: ``maml-trpo`` (Finn et al. 2017: TRPO through the adaptation),
        ``maml-ppo`` (Schulman et al. 2017's clipped surrogate through the adaptation with Adam, as
        garage's MAMLPPO) or ``promp`` (Rothfuss et al. 2019: clipped surrogate, LVC inner
        objective, penalty on the inner step's KL; needs ``inner_objective=lvc``).""",
    )
    clip_eps: float = setting(
        0.3,
        above=0,
        below=1,
        doc="""Clip range epsilon of the likelihood ratio, maml-ppo and promp (ProMP's run scripts:
        0.3; ProMP's class default and PPO's paper: 0.2; garage's MAMLPPO: 0.5).""",
    )
    outer_lr: float = setting(
        1e-3,
        above=0,
        doc="""Adam step size of the clipped meta-steps (ProMP and garage's MAMLPPO: 1e-3).""",
    )
    outer_steps: int = setting(
        5,
        low=1,
        doc="""Adam steps per meta-batch on the same samples, theta' recomputed through the inner
        loop before each (ProMP: 5; garage's MAMLPPO takes 1).""",
    )
    inner_kl_coef: float = setting(
        5e-4,
        low=0,
        doc="""promp: initial coefficient eta of the penalty eta * KL(pi_theta_old || pi_theta) on
        each inner step's batch (ProMP's run scripts: 5e-4; its class default: 1e-2).""",
    )
    inner_kl_adaptive: bool = setting(
        False,
        doc="""promp: adapt eta after every meta-step, halved when the inner KL is below
        inner_kl_target / 1.5, doubled above inner_kl_target * 1.5 (ProMP's rule; its run scripts
        keep eta fixed, its class default adapts).""",
    )
    inner_kl_target: float = setting(
        0.01,
        above=0,
        doc="""promp: the inner KL that the adaptive eta aims at (ProMP: 0.01).""",
    )


@dataclass
class MetaLearnerSettings(ClippedSettings, TRPOSettings, InnerLoopSettings):
    """What the meta-learners receive: the inner loop's, the TRPO meta-step's and the clipped
    meta-steps' settings (the fields of all groups, flat: ``s.inner_lr``, ``s.max_kl``)."""


@dataclass
class SamplerSettings:
    """The sampling back-end; every back-end gives the same batches for the same seed."""

    num_threads: int | None = setting(
        None,
        low=1,
        resumable=True,
        doc="""Physics threads of the batched env (None: all cores).""",
    )
    sampler: str = setting(
        "vector",
        choices=SAMPLERS,
        resumable=True,
        doc="""``vector`` (one batched env in this process) or ``ray`` (tasks split over Ray actors;
        ``pip install -e ".[ray]"``); both give the same batches for the same seed.""",
    )
    ray_address: str = setting(
        "local",
        check=RAY_ADDRESS,
        resumable=True,
        doc="""``sampler=ray``: ``local`` starts Ray in this process; ``auto`` or ``host:port``
        joins a running cluster (``ray start --head``).""",
    )
    num_workers: int = setting(
        2,
        low=1,
        resumable=True,
        doc="""``sampler=ray``: worker actors; each samples a contiguous shard of the meta-batch and
        reserves ``num_threads`` CPUs (1 when null) for its physics.""",
    )
    ray_max_retries: int = setting(
        3,
        low=0,
        resumable=True,
        doc="""``sampler=ray``: times a shard is re-sampled in one call after its worker died.""",
    )
    ray_timeout_s: float = setting(
        600.0,
        above=0,
        resumable=True,
        doc="""``sampler=ray``: seconds to wait for a shard (or for workers to start) before the
        worker counts as dead.""",
    )


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


RESUMABLE_KEYS = frozenset(
    f.name for group in GROUPS for f in dataclasses.fields(group) if f.metadata["resumable"]
)
"""The keys :func:`maml_rl.run.resume` may change (declared ``resumable`` above): what only
says how the run computes (length, checkpointing, device, threads, the sampling back-end, which
gives the same batches, so a run may move on or off a cluster), never what it computes."""
