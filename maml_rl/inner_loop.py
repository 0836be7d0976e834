"""Adaptation on fresh rollouts: sample, advantages, one gradient step, repeated.

The loop that meta-training's inner loop, the meta-test evaluation and the Python API's
``adapt`` share (Finn et al. 2017, Algorithm 3, lines 5-7): for step j, sample K episodes per
task with the current parameters, turn them into loss inputs (advantages checked), and take one
policy-gradient step; after the last step, sample once more with the adapted parameters. What
a "step" is differs: training re-adapts from theta through all inner batches so far
(:meth:`~maml_rl.meta_adaptation.Adaptation.adapt`), evaluation steps from the current
parameters (:func:`gradient_step`, :func:`fine_tune`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

from maml_rl.adaptation import adapt
from maml_rl.advantages import checked_advantages
from maml_rl.batch import EpisodeBatch, LossInputs, loss_inputs
from maml_rl.family import TaskFamily
from maml_rl.meta_sgd import InnerStepSizes, step_sizes_for
from maml_rl.policy import MLPPolicy, Params
from maml_rl.sampler import Sampler, make_sampler
from maml_rl.settings import AdvantageSettings, SamplerSettings


def batch_loss_inputs(batch: EpisodeBatch, settings: AdvantageSettings, what: str) -> LossInputs:
    """The loss inputs of ``batch`` with its advantages; rewards or advantages that cannot be
    learned from raise :class:`~maml_rl.errors.UnusableBatchError` naming ``what``."""
    adv = checked_advantages(
        batch, settings.gamma, settings.gae_lambda, settings.normalize_advantages, what
    )
    return loss_inputs(batch, adv)


def gradient_step(
    policy: MLPPolicy, params: Params, data: LossInputs, lr: float | Params, objective: str
) -> Params:
    """One inner policy-gradient step from ``params`` on ``data`` (no graph kept); ``lr`` a
    scalar or a tensor per parameter (Meta-SGD)."""
    leaf = {name: p.detach().requires_grad_(True) for name, p in params.items()}
    new = adapt(policy, leaf, [data], [lr], objective, create_graph=False)
    return {name: p.detach() for name, p in new.items()}


def step_sizes(alpha: float, num_steps: int) -> list[float]:
    """The test-time schedule ``[alpha, alpha/2, alpha/2, ...]`` of length ``num_steps``."""
    return [alpha if j == 0 else alpha / 2.0 for j in range(num_steps)]


Step = Callable[[int, Params, list[LossInputs]], Params]
"""``step(j, params, inputs)``: the parameters after step j, given the current ``params`` and
the loss inputs of steps 0..j."""
Phase = Callable[[str], Any]
"""A context-manager factory timing a named phase (``sampling``, ``advantages``, ``adaptation``)."""


@dataclass
class Adaptation:
    """One run of :func:`adapt_on_fresh_rollouts`: ``batches[j]`` was sampled with
    ``params[j]``; ``inputs[j]`` are the loss inputs of the batches stepped on."""

    batches: list[EpisodeBatch]
    params: list[Params]
    inputs: list[LossInputs]


def _untimed(name: str) -> nullcontext[None]:
    return nullcontext()


def adapt_on_fresh_rollouts(
    sampler: Sampler,
    tasks: Sequence[Any],
    params: Params,
    episodes_per_task: int,
    seeds: Sequence[int],
    to_inputs: Callable[[EpisodeBatch, int], LossInputs],
    step: Step,
    timer: Phase = _untimed,
    sample_last: bool = True,
) -> Adaptation:
    """``len(seeds) - 1`` adaptation steps, each on a fresh batch, then one batch more.

    Batch j is sampled with ``seeds[j]`` and the parameters after j steps; batches 0..S-1 are
    turned into loss inputs (``to_inputs(batch, j)``) and stepped on (``step``). Without
    ``sample_last`` the batch after the last step is not sampled (the caller measures the
    adapted parameters ``params[S]`` on rollouts of its own).
    """
    out = Adaptation([], [], [])
    last = len(seeds) - 1
    for j, seed in enumerate(seeds):
        if j == last and not sample_last:
            out.params.append(params)
            break
        with timer("sampling"):
            batch = sampler.sample(tasks, params, episodes_per_task, seed)
        out.batches.append(batch)
        out.params.append(params)
        if j == last:
            break
        with timer("advantages"):
            out.inputs.append(to_inputs(batch, j))
        with timer("adaptation"):
            params = step(j, params, out.inputs)
    return out


def cpu_policy(policy: MLPPolicy) -> MLPPolicy:
    """``policy`` itself when it is on the CPU, else a copy on the CPU (the caller's is left
    where it is): test-time rollouts and steps run on the CPU."""
    if any(p.device.type != "cpu" for p in policy.parameters()):
        return copy.deepcopy(policy).cpu()
    return policy


def fine_tune(
    policy: MLPPolicy,
    family: TaskFamily,
    tasks: Sequence[Any],
    schedule: Sequence[float],
    episodes_per_task: int,
    seeds: Sequence[int],
    advantages: AdvantageSettings,
    objective: str,
    what: Callable[[int], str],
    inner_lr: float,
    sampling: SamplerSettings | None = None,
    learned: InnerStepSizes | None = None,
    sample_last: bool = True,
) -> Adaptation:
    """Test-time adaptation of ``policy`` (on the CPU; sampled by the back-end ``sampling``
    names, default this process) to ``tasks``: step j
    takes one :func:`gradient_step` of size ``schedule[j]`` from the current parameters, on
    rollouts sampled with ``seeds[j]``; ``len(seeds) == len(schedule) + 1``. With Meta-SGD's
    ``learned`` step sizes each step takes them times ``schedule[j] / inner_lr``
    (:func:`~maml_rl.meta_sgd.step_sizes_for`); ``inner_lr`` is training's step size.
    ``what(j)`` names batch j in an :class:`~maml_rl.errors.UnusableBatchError`; without
    ``sample_last`` the batch after the last step is not sampled. The caller's policy is left
    where it is: one on another device is copied to the CPU."""
    policy = cpu_policy(policy)
    steps = step_sizes_for(learned, schedule, inner_lr, detach=True)
    steps = [{k: a.cpu() for k, a in lr.items()} if isinstance(lr, dict) else lr for lr in steps]
    sampler = make_sampler(family, policy, sampling or SamplerSettings())
    try:
        return adapt_on_fresh_rollouts(
            sampler,
            tasks,
            {name: p.detach() for name, p in policy.params().items()},
            episodes_per_task,
            seeds,
            lambda batch, j: batch_loss_inputs(batch, advantages, what(j)),
            lambda j, params, inputs: gradient_step(
                policy, params, inputs[-1], steps[j], objective
            ),
            sample_last=sample_last,
        )
    finally:
        sampler.close()
