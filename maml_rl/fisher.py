"""Curvature of the MAML-TRPO meta-step by hand-written passes through the Gaussian MLP.

At the current theta, pi_old' = pi_theta', so the Hessian of the mean KL(pi_old' || pi_theta')
is exactly the Gauss-Newton matrix

    H = J^T F J,      J = d(mu, log sigma)/d theta  (through the inner loop),

with F the Gaussian's Fisher information in its outputs: 1/sigma^2 for each mean coordinate and 2
for each log-std coordinate, weighted like the KL average (Martens 2014; Schulman et al. 2015,
appendix C). The Jacobian of the inner step theta' = theta - alpha * grad L_in(theta) is
I - alpha * H_in, so per task

    J v = J_out (I - alpha H_in) v,        J^T z = (I - alpha H_in) J_out^T z,

and the meta-gradient is grad_theta L = (I - alpha H_in) grad_theta' L (one factor per inner
step, applied in reverse order; H_in is symmetric).

Every product here is computed by explicit passes over activations cached once per meta-step
(:class:`MLPTape`): J_out u is a forward-mode (R-op) pass, J_out^T z an ordinary backward pass
and H_in v Pearlmutter's (1994) R-op of the backward pass, which keeps the second-derivative
terms of the network (W-W cross terms; tanh'') and of the Gaussian log-likelihood. This is the
same arithmetic as reverse-over-reverse autograd without its graph bookkeeping, extra element-
wise passes and copies; ``tests/test_fisher.py`` checks every product against double-backward
autograd (:func:`maml_rl.trpo.hessian_vector_product` of the KL through the adaptation).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from maml_rl.adaptation import InnerStep
from maml_rl.batch import LossInputs
from maml_rl.policy import GaussianMLPPolicy, Params, replicate
from maml_rl.trpo import flatten, unflatten_like


def _weight(layer: int) -> str:
    return f"layers.{layer}.weight"


def _bias(layer: int) -> str:
    return f"layers.{layer}.bias"


class MLPTape:
    """The forward pass of a task-batched :class:`GaussianMLPPolicy` at fixed parameters on fixed
    observations ``[M, N, obs_dim]``, kept for derivative products.

    Layer l computes z_l = h_{l-1} W_l^T + b_l, h_l = phi(z_l) (h_0 = observations, the last
    layer linear: mu = z_L). Kept: the inputs h_{l-1}, the slopes phi'(z_l) and, for tanh, the
    curvatures phi''(z_l) = -2 h_l phi'(z_l) (ReLU's is 0 almost everywhere, as in autograd).
    """

    def __init__(self, policy: GaussianMLPPolicy, params: Params, observations: Tensor) -> None:
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
                    self.mean = z
                elif self.tanh:
                    h = torch.tanh(z)
                    slope = 1.0 - h * h
                    self.slopes.append(slope)
                    self.curvatures.append(-2.0 * h * slope)
                else:
                    self.slopes.append((z > 0).to(z.dtype))
                    h = z.clamp_min(0.0)
        self.log_std = params["log_std"].detach()  # [M, A]

    def jvp(self, direction: Params) -> tuple[Tensor, list[Tensor | None], list[Tensor]]:
        """R-op of the forward pass: R(mu) ``[M, N, A]`` for the parameter direction
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

    def deltas(self, grad_mean: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """Backward pass of an output gradient dL/dmu ``[M, N, A]``: the gradients
        delta_l = dL/dz_l of every layer (last first in the recursion, returned in layer order)
        and, for tanh, the back-propagated delta_{l+1} W_{l+1} before the slope."""
        deltas: list[Tensor] = [grad_mean]
        backprops: list[Tensor] = []
        delta = grad_mean
        for i in range(self.num_layers - 1, 0, -1):
            back = torch.bmm(delta, self.weights[i])
            if self.tanh:
                backprops.append(back)
                delta = back * self.slopes[i - 1]
            else:
                delta = back.mul_(self.slopes[i - 1])
            deltas.append(delta)
        return deltas[::-1], backprops[::-1]

    def vjp(self, grad_mean: Tensor) -> Params:
        """J^T of the network body: dL/d(W_l, b_l) per task for the output gradient
        dL/dmu: dL/dW_l = delta_l^T h_{l-1}, dL/db_l = sum_n delta_l (log_std not included)."""
        grads: Params = {}
        delta = grad_mean
        for i in range(self.num_layers - 1, -1, -1):
            grads[_weight(i)] = torch.bmm(delta.mT, self.inputs[i])
            grads[_bias(i)] = delta.sum(1)
            if i > 0:
                delta = torch.bmm(delta, self.weights[i]).mul_(self.slopes[i - 1])
        return grads


class InnerLossCurvature:
    """v -> H_in v, the per-task Hessian of one inner step's loss at that step's parameters.

    The inner loss (:func:`maml_rl.adaptation.inner_loss`) is L = -sum_n c_n w_n with
    c_n = A_n m_n / sum(m) and w_n = log pi(a_n|s_n) ("reinforce") or its LVC form, whose
    Hessian adds -sum_n c_n g_n g_n^T (g_n = grad log pi_n). With e = (a - mu)/sigma and
    s = log sigma the Gaussian terms are

        dL/dmu = -c e / sigma,                  dL/ds = -sum_n c (e^2 - 1),
        R(dL/dmu) = c (R(mu) / sigma^2 + 2 e R(s) / sigma),
        R(dL/ds) = sum_n 2 c (e R(mu) / sigma + e^2 R(s)),

    and the network part is the R-op of the backward pass (Pearlmutter 1994):

        R(delta_l) = phi'(z_l) (R(delta_{l+1}) W_{l+1} + delta_{l+1} R(W_{l+1}))
                     + phi''(z_l) R(z_l) delta_{l+1} W_{l+1},
        R(dL/dW_l) = R(delta_l)^T h_{l-1} + delta_l^T R(h_{l-1}),   R(dL/db_l) = sum_n R(delta_l).
    """

    def __init__(self, policy: GaussianMLPPolicy, step: InnerStep) -> None:
        params = {k: v.detach() for k, v in step.params.items()}
        if params["log_std"].dim() == 1:
            params = replicate(params, step.data.mask.shape[0])
        data = step.data
        self.tape = MLPTape(policy, params, data.observations)
        self.lvc = step.objective == "lvc"
        with torch.no_grad():
            inv_std = torch.exp(-self.tape.log_std).unsqueeze(1)  # [M, 1, A]
            self.inv_std = inv_std
            self.e = (data.actions - self.tape.mean) * inv_std  # [M, N, A]
            count = data.mask.sum(-1, keepdim=True).clamp_min(1.0)
            self.c = (data.advantages * data.mask / count).unsqueeze(-1)  # [M, N, 1]
            grad_mean = -self.c * self.e * inv_std
            self.deltas, self.backprops = self.tape.deltas(grad_mean)

    def __call__(self, v: Params) -> Params:
        """H_in v for task-batched directions ``v`` (``[M, ...]`` per parameter)."""
        tape, c, e, inv_std = self.tape, self.c, self.e, self.inv_std
        r_mean, r_inputs, r_pre = tape.jvp(v)
        r_s = v["log_std"].unsqueeze(1)  # [M, 1, A]
        e_scaled = e * inv_std
        r_grad_mean = c * (r_mean * inv_std * inv_std + 2.0 * e_scaled * r_s)
        r_grad_s = (2.0 * c * (e_scaled * r_mean + e * e * r_s)).sum(1)
        if self.lvc:  # - sum_n c_n g_n (g_n . v), g_n . v = R(log pi_n)
            r_logp = (e_scaled * r_mean + (e * e - 1.0) * r_s).sum(-1, keepdim=True)
            r_grad_mean = r_grad_mean - c * r_logp * e_scaled
            r_grad_s = r_grad_s - (c * r_logp * (e * e - 1.0)).sum(1)
        out: Params = {"log_std": r_grad_s}
        r_delta = r_grad_mean
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
    return LossInputs(*(x[:, idx] for x in data))


class AdaptationCurvature:
    """The meta-step's curvature through the adaptation, from tapes built once.

    ``steps`` are the inner steps taken from theta to ``adapted`` (empty for first-order MAML,
    whose theta' does not depend on theta through the gradient), each possibly on a subsample of
    its batch; ``valid_data`` is the post-update batch (or a subsample of it) on which the KL and
    surrogate are averaged: ``mean_tasks(task_mean(.))`` as in
    :meth:`maml_rl.meta_learner.MetaLearner.surrogate_and_kl`.
    """

    def __init__(
        self,
        policy: GaussianMLPPolicy,
        theta: Params,
        adapted: Params,
        steps: Sequence[InnerStep],
        valid_data: LossInputs,
    ) -> None:
        if not isinstance(policy, GaussianMLPPolicy):
            raise TypeError(
                f"hand-written curvature products need a GaussianMLPPolicy, got "
                f"{type(policy).__name__}; use hvp='exact'"
            )
        self.names = list(theta)
        self.theta_list = [theta[k] for k in self.names]
        self.num_tasks = valid_data.mask.shape[0]
        adapted = {k: v.detach() for k, v in adapted.items()}
        if adapted["log_std"].dim() == 1:  # no inner step: one set for all
            adapted = replicate(adapted, self.num_tasks)
        self.inner = [(InnerLossCurvature(policy, step), step.lr) for step in steps]
        self.valid = valid_data
        self.tape = MLPTape(policy, adapted, valid_data.observations)
        with torch.no_grad():
            self.weight = valid_data.mask / (
                valid_data.mask.sum(-1, keepdim=True).clamp_min(1.0) * self.num_tasks
            )  # [M, N]: the KL and surrogate average
            self.mean_fisher = (
                self.weight.unsqueeze(-1) * torch.exp(-2.0 * self.tape.log_std)[:, None, :]
            )
            self.log_std_fisher = 2.0 * self.weight.sum(-1, keepdim=True)  # [M, 1]

    def _through_inner(self, vectors: Params, reverse: bool) -> Params:
        """prod_j (I - alpha_j H_j) applied to per-task vectors (J^T: in reverse step order)."""
        for curvature, lr in reversed(self.inner) if reverse else self.inner:
            hv = curvature(vectors)
            vectors = {k: vectors[k] - lr * hv[k] for k in self.names}
        return vectors

    def _per_task(self, flat: Tensor) -> Params:
        return {
            k: x.unsqueeze(0).expand(self.num_tasks, *x.shape)
            for k, x in zip(self.names, unflatten_like(flat, self.theta_list))
        }

    def _to_theta(self, per_task: Params) -> Tensor:
        return flatten([per_task[k].sum(0) for k in self.names])

    def fisher_vector_product(self, v: Tensor, damping: float = 0.0) -> Tensor:
        """(J^T F J + damping I) v for the flattened meta-parameters."""
        u = self._through_inner(self._per_task(v), reverse=False)
        d_mean = self.tape.jvp(u)[0]
        z = self.tape.vjp(self.mean_fisher * d_mean)
        z["log_std"] = self.log_std_fisher * u["log_std"]
        return self._to_theta(self._through_inner(z, reverse=True)) + damping * v

    def surrogate_gradient(self, advantages: Tensor) -> Tensor:
        """grad_theta of L = -mean_i task_mean(pi_theta'/pi_old' A) at pi_old' = pi_theta'.

        Per sample dL/dmu = -w A e / sigma and dL/d log sigma = -w A (e^2 - 1), with w the
        average's weight and e = (a - mu)/sigma; then J_out^T and the inner factors.
        """
        with torch.no_grad():
            inv_std = torch.exp(-self.tape.log_std).unsqueeze(1)
            e = (self.valid.actions - self.tape.mean) * inv_std
            wa = (self.weight * advantages).unsqueeze(-1)
            grads = self.tape.vjp(-wa * e * inv_std)
            grads["log_std"] = -(wa * (e * e - 1.0)).sum(1)
            return self._to_theta(self._through_inner(grads, reverse=True))
