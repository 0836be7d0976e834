"""Curvature of the MAML-TRPO meta-step by hand-written passes through the MLP policies.

At the current theta, pi_old' = pi_theta', so the Hessian of the mean KL(pi_old' || pi_theta')
is exactly the Gauss-Newton matrix

    H = J^T F J,      J = d(mu, log sigma)/d theta  (through the inner loop),

with F the policy distribution's Fisher information in its outputs (Gaussian: 1/sigma^2 for
each mean coordinate and 2 for each log-std coordinate; categorical: diag(p) - p p^T on the
logits), weighted like the KL average (Martens 2014; Schulman et al. 2015, appendix C). The
Jacobian of the inner step theta' = theta - alpha * grad L_in(theta) is I - alpha * H_in, so
per task

    J v = J_out (I - alpha H_in) v,        J^T z = (I - alpha H_in) J_out^T z,

and the meta-gradient is grad_theta L = (I - alpha H_in) grad_theta' L (one factor per inner
step, applied in reverse order; H_in is symmetric). With Meta-SGD's learned step sizes
alpha = exp(rho) (Li et al. 2017; :mod:`maml_rl.meta_sgd`) the meta-parameters are (theta, rho)
and an inner step contributes d theta'/d theta = I - diag(alpha) H_in and d theta'/d rho =
-diag(alpha o g_in), g_in the task's inner gradient.

Every product here is computed by explicit passes over activations cached once per meta-step
(:class:`MLPTape`): J_out u is a forward-mode (R-op) pass, J_out^T z an ordinary backward pass
and H_in v Pearlmutter's (1994) R-op of the backward pass, which keeps the second-derivative
terms of the network (W-W cross terms; tanh''), of the log-likelihood (the distribution's
head: ``policy.distribution.head``, :mod:`maml_rl.distributions`)
and of the inner objective (LVC's and DiCE's score products). This is the same arithmetic as
reverse-over-reverse autograd (the same FLOPs) without its graph bookkeeping, extra element-wise
passes and copies; on a CPU the tasks are processed in small groups whose intermediates stay in
cache. ``tests/test_fisher.py`` checks every product against double-backward autograd
(:func:`maml_rl.trpo.hessian_vector_product` of the KL through the adaptation) and explicit
Hessians.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import TypeVar

import torch
from torch import Tensor

from maml_rl.adaptation import InnerStep, dice_increments
from maml_rl.batch import LossInputs
from maml_rl.distributions import Head
from maml_rl.policy import MLPPolicy, Params, is_task_batched, replicate
from maml_rl.trpo import flatten, unflatten_like

_T = TypeVar("_T")


def _weight(layer: int) -> str:
    return f"layers.{layer}.weight"


def _bias(layer: int) -> str:
    return f"layers.{layer}.bias"


def _select(obj: _T, tasks: slice) -> _T:
    """A shallow copy of ``obj`` whose tensors (and lists of tensors, and objects with a
    ``select``) keep only the tasks ``tasks`` of their leading dimension: views, no copies."""
    out = copy.copy(obj)
    for name, value in vars(obj).items():
        if isinstance(value, Tensor):
            setattr(out, name, value[tasks])
        elif isinstance(value, list) and value and isinstance(value[0], Tensor):
            setattr(out, name, [t[tasks] for t in value])
        elif hasattr(value, "select"):
            setattr(out, name, value.select(tasks))
    return out


class MLPTape:
    """The forward pass of a task-batched MLP policy body at fixed parameters on fixed
    observations ``[M, N, obs_dim]``, kept for derivative products.

    Layer l computes z_l = h_{l-1} W_l^T + b_l, h_l = phi(z_l) (h_0 = observations, the last
    layer linear: its z_L is the output, the Gaussian's mean or the categorical's logits). Kept:
    the inputs h_{l-1}, the slopes phi'(z_l) and, for tanh, the curvatures
    phi''(z_l) = -2 h_l phi'(z_l) (ReLU's is 0 almost everywhere, as in autograd).
    """

    def __init__(self, policy: MLPPolicy, params: Params, observations: Tensor) -> None:
        self.num_layers = len(policy.layers)
        self.tanh = policy.nonlinearity == "tanh"
        self.weights = [params[_weight(i)] for i in range(self.num_layers)]
        self.inputs: list[Tensor] = []
        self.slopes: list[Tensor] = []
        self.curvatures: list[Tensor] = []
        h = observations
        with torch.no_grad():
            for i, w in enumerate(self.weights):
                self.inputs.append(h)
                z = torch.bmm(h, w.mT).add_(params[_bias(i)].unsqueeze(1))
                if i == self.num_layers - 1:
                    self.output = z
                elif self.tanh:
                    h = torch.tanh(z)
                    slope = 1.0 - h * h
                    self.slopes.append(slope)
                    self.curvatures.append(-2.0 * h * slope)
                else:
                    self.slopes.append((z > 0).to(z.dtype))
                    h = z.clamp_min(0.0)

    def select(self, tasks: slice) -> MLPTape:
        """The tape of the tasks ``tasks`` only (views)."""
        return _select(self, tasks)

    def jvp(self, direction: Params) -> tuple[Tensor, list[Tensor | None], list[Tensor]]:
        """R-op of the forward pass: R(z_L) ``[M, N, out]`` for the parameter direction
        ``direction`` (task-batched), with R(h_{l-1}) per layer (None for the observations) and
        R(z_l) of the hidden layers (kept for tanh's curvature term).

        R(z_l) = R(h_{l-1}) W_l^T + h_{l-1} R(W_l)^T + R(b_l),   R(h_l) = phi'(z_l) R(z_l).
        """
        r_inputs: list[Tensor | None] = [None]
        r_pre: list[Tensor] = []
        r_h: Tensor | None = None
        for i, w in enumerate(self.weights):
            rz = torch.bmm(self.inputs[i], direction[_weight(i)].mT)
            if r_h is not None:
                rz.baddbmm_(r_h, w.mT)
            rz.add_(direction[_bias(i)].unsqueeze(1))  # (a broadcast baddbmm input is copied)
            if i == self.num_layers - 1:
                return rz, r_inputs, r_pre
            if self.tanh:
                r_pre.append(rz)
                r_h = rz * self.slopes[i]
            else:
                r_h = rz.mul_(self.slopes[i])
            r_inputs.append(r_h)
        raise AssertionError("unreachable: the policy has at least one layer")

    def deltas(self, grad_output: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """Backward pass of an output gradient dL/dz_L ``[M, N, out]``: the gradients
        delta_l = dL/dz_l of every layer (in layer order) and, for tanh, the back-propagated
        delta_{l+1} W_{l+1} before the slope."""
        deltas: list[Tensor] = [grad_output]
        backprops: list[Tensor] = []
        delta = grad_output
        for i in range(self.num_layers - 1, 0, -1):
            back = torch.bmm(delta, self.weights[i])
            if self.tanh:
                backprops.append(back)
                delta = back * self.slopes[i - 1]
            else:
                delta = back.mul_(self.slopes[i - 1])
            deltas.append(delta)
        return deltas[::-1], backprops[::-1]

    def vjp(self, grad_output: Tensor) -> Params:
        """J^T of the body: dL/d(W_l, b_l) per task for the output gradient dL/dz_L:
        dL/dW_l = delta_l^T h_{l-1}, dL/db_l = sum_n delta_l."""
        grads: Params = {}
        delta = grad_output
        for i in range(self.num_layers - 1, -1, -1):
            grads[_weight(i)] = torch.bmm(delta.mT, self.inputs[i])
            grads[_bias(i)] = delta.sum(1)
            if i > 0:
                delta = torch.bmm(delta, self.weights[i]).mul_(self.slopes[i - 1])
        return grads


def _extra_direction(head: Head, v: Params) -> Tensor | None:
    """The direction of the head's per-task parameter, broadcast over samples: ``[M, 1, A]``."""
    return v[head.extra].unsqueeze(1) if head.extra else None


class InnerLossCurvature:
    """v -> H_in v, the per-task Hessian of one inner step's loss at that step's parameters.

    The inner loss (:func:`maml_rl.adaptation.inner_loss`) is L = -sum_n c_n w_n with
    c_n = A_n m_n / sum(m) and w_n = log pi(a_n|s_n) ("reinforce") or its LVC form, whose
    Hessian adds -sum_n c_n g_n g_n^T (g_n = grad log pi_n). The output part,
    R(dL/dz_L) = -c d2 log pi [R(z_L), R(s)] (and -sum_n of it for the head's per-task
    parameter s), comes from the distribution's head (:mod:`maml_rl.distributions`); the
    network part is the R-op of the backward pass (Pearlmutter 1994):

        R(delta_l) = phi'(z_l) (R(delta_{l+1}) W_{l+1} + delta_{l+1} R(W_{l+1}))
                     + phi''(z_l) R(z_l) delta_{l+1} W_{l+1},
        R(dL/dW_l) = R(delta_l)^T h_{l-1} + delta_l^T R(h_{l-1}),   R(dL/db_l) = sum_n R(delta_l).
    """

    def __init__(self, policy: MLPPolicy, step: InnerStep) -> None:
        params = {k: v.detach() for k, v in step.params.items()}
        if not is_task_batched(params):
            params = replicate(params, step.data.mask.shape[0])
        data = step.data
        self.tape = MLPTape(policy, params, data.observations)
        self.lvc = step.objective == "lvc"
        self.dice = step.objective == "dice"
        with torch.no_grad():
            self.head = policy.distribution.head(data.actions, self.tape.output, params)
            count = data.mask.sum(-1, keepdim=True).clamp_min(1.0)
            self.c = (data.advantages * data.mask / count).unsqueeze(-1)  # [M, N, 1]
            if self.dice:
                self.increments = dice_increments(data)  # [M, T, K]
                self.step_weight = (data.mask / count).unsqueeze(-1)  # [M, N, 1]
            self.deltas, self.backprops = self.tape.deltas(-self.c * self.head.score_output)

    def select(self, tasks: slice) -> InnerLossCurvature:
        """The curvature of the tasks ``tasks`` only (views of the same tapes)."""
        return _select(self, tasks)

    def gradient(self) -> Params:
        """The per-task gradient of the inner loss (what autograd's backward of
        :func:`maml_rl.adaptation.inner_loss` gives): dL/dW_l = delta_l^T h_{l-1},
        dL/db_l = sum_n delta_l, and -sum_n c (d log pi / ds) for the head's parameter."""
        grads: Params = {}
        for i in range(self.tape.num_layers):
            grads[_weight(i)] = torch.bmm(self.deltas[i].mT, self.tape.inputs[i])
            grads[_bias(i)] = self.deltas[i].sum(1)
        if self.head.extra:
            grads[self.head.extra] = -(self.c * self.head.score_extra).sum(1)
        return grads

    def __call__(self, v: Params) -> Params:
        """H_in v for task-batched directions ``v`` (``[M, ...]`` per parameter)."""
        tape, head, c = self.tape, self.head, self.c
        r_output, r_inputs, r_pre = tape.jvp(v)
        r_extra = _extra_direction(head, v)
        h_output, h_extra = head.hessian(r_output, r_extra)
        r_grad_output = -c * h_output
        out: Params = {}
        if head.extra:
            out[head.extra] = -(c * h_extra).sum(1)
        if self.lvc:  # - sum_n c_n g_n (g_n . v), g_n . v = R(log pi_n)
            r_logp = (head.score_output * r_output).sum(-1, keepdim=True)
            if head.extra:
                r_logp = r_logp + (head.score_extra * r_extra).sum(-1, keepdim=True)
                out[head.extra] = out[head.extra] - (c * r_logp * head.score_extra).sum(1)
            r_grad_output = r_grad_output - c * r_logp * head.score_output
        if self.dice:  # - 1/n sum_t w_t grad S_t (grad S_t . v), S_t = cumulative log pi
            r_logp = (head.score_output * r_output).sum(-1, keepdim=True)
            if head.extra:
                r_logp = r_logp + (head.score_extra * r_extra).sum(-1, keepdim=True)
            shape = self.increments.shape
            r_cumulative = torch.cumsum((r_logp * self.step_weight).reshape(shape), dim=1)
            q = (self.increments * r_cumulative).flip(1).cumsum(1).flip(1)  # sum over t >= t'
            q = q.reshape(shape[0], -1, 1) * (self.step_weight > 0)
            r_grad_output = r_grad_output - q * head.score_output
            if head.extra:
                out[head.extra] = out[head.extra] - (q * head.score_extra).sum(1)
        r_delta = r_grad_output
        for i in range(tape.num_layers - 1, -1, -1):
            delta = self.deltas[i]
            grad_w = torch.bmm(r_delta.mT, tape.inputs[i])
            r_input = r_inputs[i]
            if r_input is not None:
                grad_w.baddbmm_(delta.mT, r_input)
            out[_weight(i)] = grad_w
            out[_bias(i)] = r_delta.sum(1)
            if i > 0:
                back = torch.bmm(r_delta, tape.weights[i]).baddbmm_(delta, v[_weight(i)])
                back.mul_(tape.slopes[i - 1])
                if tape.tanh:
                    back.addcmul_(tape.curvatures[i - 1] * r_pre[i - 1], self.backprops[i - 1])
                r_delta = back
        return out


def subsample(data: LossInputs, fraction: float, generator: torch.Generator) -> LossInputs:
    """The same random ``fraction`` of the N sample columns of every task (at least one)."""
    n = data.mask.shape[1]
    keep = max(1, round(fraction * n))
    idx = torch.randperm(n, generator=generator)[:keep].sort().values.to(data.mask.device)
    return data.map(lambda x: x[:, idx], keeps_episodes=False)


CACHE_BYTES = 24 * 2**20
"""Working set aimed at per task group on CPU: a group's tapes and intermediates (about twelve
[tasks, N, width] arrays) stay in the last-level cache while a product runs over them (2
navigation tasks, 1 cheetah task: measured best of 1-5 and all 20 on a 2-core EPYC)."""


def task_group_size(num_tasks: int, samples: int, width: int, itemsize: int, cuda: bool) -> int:
    """Tasks per group in :class:`AdaptationCurvature`: all at once on a GPU (one kernel per
    layer); on a CPU as many as keep ~12 arrays of ``samples x width`` per task in
    :data:`CACHE_BYTES` (at least one)."""
    if cuda:
        return num_tasks
    return max(1, min(num_tasks, CACHE_BYTES // (12 * samples * width * itemsize)))


def _times(lr: float | Params, name: str, x: Tensor) -> Tensor:
    """alpha o x for parameter ``name``: a scalar step size, or its per-parameter tensor."""
    return lr[name] * x if isinstance(lr, dict) else lr * x


class _TaskGroup:
    """The tapes of a contiguous group of tasks: their inner steps' loss curvatures (with step
    sizes), the post-update tape and head, and the KL / surrogate average's weights.

    ``inner`` holds per step (H_j or None, alpha_j, s_j): H_j is None for first-order MAML
    (d theta_j / d theta_{j-1} = I); alpha_j a scalar or, with Meta-SGD's learned step sizes,
    one tensor per parameter; s_j = alpha_j o g_j (g_j the step's per-task inner gradient) for
    learned step sizes, whose rho = log alpha enters theta_j with d theta_j / d rho = -diag(s_j).
    """

    def __init__(
        self,
        inner: list[tuple[InnerLossCurvature | None, float | Params, Params | None]],
        tape: MLPTape,
        head: Head,
        weight: Tensor,
    ) -> None:
        self.inner, self.tape, self.head, self.weight = inner, tape, head, weight

    def forward_through_inner(self, u: Params, v_rho: Params | None) -> Params:
        """J_in (v, v_rho): u_j = (I - alpha_j H_j) u_{j-1} - s_j o v_rho, with u_0 = v."""
        for curvature, lr, s in self.inner:
            if curvature is not None:
                hv = curvature(u)
                u = {k: x - _times(lr, k, hv[k]) for k, x in u.items()}
            if s is not None and v_rho is not None:
                u = {k: x - s[k] * v_rho[k] for k, x in u.items()}
        return u

    def backward_through_inner(self, u: Params) -> tuple[Params, Params | None]:
        """J_in^T z: in reverse step order, the rho part gains -s_j o u_j and
        u_{j-1} = u_j - H_j (alpha_j o u_j) (H_j symmetric). Returns (theta part, rho part)."""
        rho: Params | None = None
        for curvature, lr, s in reversed(self.inner):
            if s is not None:
                part = {k: -s[k] * x for k, x in u.items()}
                rho = part if rho is None else {k: rho[k] + part[k] for k in rho}
            if curvature is None:
                continue
            if isinstance(lr, dict):  # H_j diag(alpha_j): alpha first
                hv = curvature({k: lr[k] * x for k, x in u.items()})
                u = {k: x - hv[k] for k, x in u.items()}
            else:  # a scalar commutes with H_j: scaled after, as before Meta-SGD (same bits)
                hv = curvature(u)
                u = {k: x - lr * hv[k] for k, x in u.items()}
        return u, rho

    def fisher_product(
        self, v: Params, v_rho: Params | None = None
    ) -> tuple[Params, Params | None]:
        """J^T F J (v, v_rho) per task, J through the inner steps and the policy's outputs."""
        u = self.forward_through_inner(v, v_rho)
        f_output, f_extra = self.head.fisher(self.tape.jvp(u)[0], _extra_direction(self.head, u))
        z = self.tape.vjp(self.weight * f_output)
        if self.head.extra:
            z[self.head.extra] = (self.weight * f_extra).sum(1)
        return self.backward_through_inner(z)

    def surrogate_gradient(self, advantages: Tensor) -> tuple[Params, Params | None]:
        """Per task: per sample dL/d(output) = -w A d log pi / d(output), then J^T."""
        wa = self.weight * advantages.unsqueeze(-1)
        grads = self.tape.vjp(-wa * self.head.score_output)
        if self.head.extra:
            grads[self.head.extra] = -(wa * self.head.score_extra).sum(1)
        return self.backward_through_inner(grads)


class AdaptationCurvature:
    """The meta-step's curvature through the adaptation, from tapes built once.

    ``steps`` are the inner steps taken from theta to ``adapted`` (empty for first-order MAML,
    whose theta' does not depend on theta through the gradient), each possibly on a subsample of
    its batch; ``post_update`` is the post-update batch (or a subsample of it) on which the KL and
    surrogate are averaged: ``mean_tasks(task_mean(.))`` as in
    :meth:`maml_rl.meta_learner.TRPO.surrogate_and_kl`. The tasks are split into groups
    (``group_size``; default :func:`task_group_size`) whose products run one after another, so
    that on a CPU each group's intermediates stay in cache; the sums over tasks are the same.

    Steps whose size is one tensor per parameter (Meta-SGD's alpha = exp(rho),
    :mod:`maml_rl.meta_sgd`) make rho meta-parameters too: the products and gradients are then
    over (theta, rho), flattened theta first, rho after in the same name order. With
    ``first_order`` such steps are kept only for d theta'/d rho (their H_j is dropped).
    """

    def __init__(
        self,
        policy: MLPPolicy,
        theta: Params,
        adapted: Params,
        steps: Sequence[InnerStep],
        post_update: LossInputs,
        group_size: int | None = None,
        inner: Sequence[InnerLossCurvature] | None = None,
        first_order: bool = False,
    ) -> None:
        self.names = list(theta)
        self.theta_list = [theta[k] for k in self.names]
        num_tasks, samples = post_update.mask.shape
        adapted = {k: v.detach() for k, v in adapted.items()}
        if not is_task_batched(adapted):  # no inner step: one set for all
            adapted = replicate(adapted, num_tasks)
        if inner is None:
            inner = [InnerLossCurvature(policy, step) for step in steps]
        lrs = [step.lr for step in steps]
        self.learned = any(isinstance(lr, dict) for lr in lrs)
        if first_order and not self.learned:
            steps, inner, lrs = [], [], []
        scaled: list[Params | None] = []  # s_j = alpha_j o g_j, per task
        with torch.no_grad():
            for curvature, lr in zip(inner, lrs):
                if isinstance(lr, dict):
                    g = curvature.gradient()
                    scaled.append({k: lr[k].detach() * g[k] for k in self.names})
                else:
                    scaled.append(None)
        lrs = [{k: a.detach() for k, a in lr.items()} if isinstance(lr, dict) else lr for lr in lrs]
        tape = MLPTape(policy, adapted, post_update.observations)
        with torch.no_grad():
            head = policy.distribution.head(post_update.actions, tape.output, adapted)
            weight = (
                post_update.mask
                / (post_update.mask.sum(-1, keepdim=True).clamp_min(1.0) * num_tasks)
            ).unsqueeze(-1)  # [M, N, 1]: the KL and surrogate average
        if group_size is None:
            widest = max(policy.hidden_sizes, default=1)
            samples = max([samples, *(step.data.mask.shape[1] for step in steps)])
            obs = post_update.observations
            group_size = task_group_size(
                num_tasks, samples, widest, obs.element_size(), obs.device.type == "cuda"
            )
        self.groups = []
        for start in range(0, num_tasks, group_size):
            tasks = slice(start, start + group_size)
            factors = [
                (
                    None if first_order else curvature.select(tasks),
                    lr,
                    None if s is None else {k: x[tasks] for k, x in s.items()},
                )
                for curvature, lr, s in zip(inner, lrs, scaled)
            ]
            group = _TaskGroup(factors, tape.select(tasks), head.select(tasks), weight[tasks])
            self.groups.append((tasks, group))

    def _sum_over_tasks(self, per_group: list[tuple[Params, Params | None]]) -> Tensor:
        """Flatten the sums over tasks: theta's parts, then (learned step sizes) rho's."""
        parts = [theta for theta, _ in per_group]
        total = [sum(g[k].sum(0) for g in parts) for k in self.names]
        if self.learned:
            rhos = [rho for _, rho in per_group]
            total += [sum(g[k].sum(0) for g in rhos) for k in self.names]
        return flatten(total)

    def fisher_vector_product(self, v: Tensor, damping: float = 0.0) -> Tensor:
        """(J^T F J + damping I) v for the flattened meta-parameters."""
        like = self.theta_list * (2 if self.learned else 1)
        pieces = unflatten_like(v, like)
        shared = dict(zip(self.names, pieces))
        shared_rho = dict(zip(self.names, pieces[len(self.names) :])) if self.learned else None
        products = []
        for _, group in self.groups:
            size = group.weight.shape[0]
            products.append(
                group.fisher_product(
                    {k: x.expand(size, *x.shape) for k, x in shared.items()}, shared_rho
                )
            )
        return self._sum_over_tasks(products) + damping * v

    def surrogate_gradient(self, advantages: Tensor) -> Tensor:
        """grad of L = -mean_i task_mean(pi_theta'/pi_old' A) at pi_old' = pi_theta' (in theta,
        and rho for learned step sizes): per sample dL/d(output) = -w A d log pi / d(output),
        then J_out^T and the inner factors."""
        with torch.no_grad():
            return self._sum_over_tasks(
                [group.surrogate_gradient(advantages[tasks]) for tasks, group in self.groups]
            )
