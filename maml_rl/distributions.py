"""The policies' action distributions: one class per kind, owning all that kind's arithmetic.

A policy (:mod:`maml_rl.policy`) maps observations through an MLP *body* to the distribution's
*output*: for :class:`DiagGaussian` (``Box`` actions) the pair ``(mean, log_std)``, the body
giving the mean and the policy's ``log_std`` parameter the log standard deviation; for
:class:`Categorical` (``Discrete`` actions) the logits themselves. The distribution object
(``policy.distribution``, made from an action space by :func:`distribution_for`) then owns

- drawing actions from pre-drawn noise (:meth:`~DiagGaussian.noise`,
  :meth:`~DiagGaussian.sample_from_noise`; :meth:`~DiagGaussian.sample_numpy` for the API's
  numpy draws), and the mode;
- ``log_prob`` and ``kl`` (closed forms in the functions' docstrings);
- the score, Hessian and Fisher information of log pi in its outputs that the hand-written
  curvature products of :mod:`maml_rl.fisher` need (:meth:`~DiagGaussian.head`:
  :class:`GaussianHead`, :class:`CategoricalHead`),

so that no other module asks which kind a policy is (after SB3's
``common/distributions.py`` and rlax's distribution objects). The noise draws are those the
samplers always made (same generator calls, order and dtype), so batches are unchanged.
"""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

_LOG_2PI = math.log(2.0 * math.pi)

GaussianOutput = tuple[Tensor, Tensor]
"""A diagonal Gaussian's output: ``(mean [..., A], log_std)``, log_std broadcasting."""


def gaussian_log_prob(actions: Tensor, mean: Tensor, log_std: Tensor) -> Tensor:
    """log N(a; mu, sigma^2), summed over the last (action) dimension.

    log p = sum_d [ -(a_d - mu_d)^2 / (2 sigma_d^2) - log sigma_d - log(2 pi) / 2 ].
    """
    z = (actions - mean) * torch.exp(-log_std)
    return (-0.5 * z.pow(2) - log_std - 0.5 * _LOG_2PI).sum(-1)


def gaussian_kl(mean_p: Tensor, log_std_p: Tensor, mean_q: Tensor, log_std_q: Tensor) -> Tensor:
    """KL(p || q) of diagonal Gaussians, summed over the last (action) dimension.

    KL = sum_d [ log sigma_q - log sigma_p + (sigma_p^2 + (mu_p - mu_q)^2) / (2 sigma_q^2) - 1/2 ].
    """
    var_p, var_q = torch.exp(2 * log_std_p), torch.exp(2 * log_std_q)
    kl = log_std_q - log_std_p + (var_p + (mean_p - mean_q).pow(2)) / (2 * var_q) - 0.5
    return kl.sum(-1)


def categorical_log_prob(actions: Tensor, logits: Tensor) -> Tensor:
    """log pi(a) of integer ``actions`` ``[...]`` under ``logits`` ``[..., n]``.

    log pi(a) = z_a - log sum_b exp(z_b), with z the logits (computed as ``log_softmax``).
    Raises TypeError for a floating-point ``actions`` tensor (no silent rounding).
    """
    if actions.is_floating_point() or actions.is_complex():
        raise TypeError(f"categorical actions must be an integer tensor, got {actions.dtype}")
    log_pi = torch.log_softmax(logits, dim=-1)
    return log_pi.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)


def categorical_kl(logits_p: Tensor, logits_q: Tensor) -> Tensor:
    """KL(p || q) of categorical distributions given by logits ``[..., n]``; result ``[...]``.

    KL = sum_a p_a (log p_a - log q_a), p = softmax(logits_p), q = softmax(logits_q).
    """
    log_p = torch.log_softmax(logits_p, dim=-1)
    log_q = torch.log_softmax(logits_q, dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def gaussian_noise(horizon: int, episodes: int, act_dim: int, seed: int) -> Tensor:
    """Standard normal noise eps ``[horizon, episodes, act_dim]`` float32 from ``torch.randn`` of
    a generator seeded with ``seed``: ``mu + sigma * eps[t, k]`` is the Gaussian draw of step t
    of episode k."""
    return torch.randn(
        horizon, episodes, act_dim, generator=torch.Generator().manual_seed(int(seed))
    )


def gumbel_noise(horizon: int, episodes: int, num_actions: int, seed: int) -> Tensor:
    """Standard Gumbel noise g = -log(-log u), u ~ U(0, 1), ``[horizon, episodes, num_actions]``
    float32, from ``torch.rand`` of a generator seeded with ``seed`` (u is raised to the
    smallest normal float32 so that u = 0 gives a finite g). ``argmax(logits + g[t, k])`` is a
    sample of softmax(logits): the categorical draw of step t of episode k."""
    generator = torch.Generator().manual_seed(int(seed))
    u = torch.rand(horizon, episodes, num_actions, generator=generator)
    return -torch.log(-torch.log(u.clamp_min(torch.finfo(u.dtype).tiny)))


class GaussianHead:
    """log N(a; mu, sigma^2) per sample in the outputs mu (the body's) and s = log sigma (the
    ``log_std`` parameter, one per task). With e = (a - mu) / sigma:

        d log pi / d mu = e / sigma,               d log pi / d s = e^2 - 1,
        d2 / d mu2 = -1 / sigma^2,  d2 / d mu ds = -2 e / sigma,  d2 / ds2 = -2 e^2,

    and the Fisher information (the KL's Hessian at p = q) is diag(1 / sigma^2, 2).
    Tensors are task-batched: actions and mean ``[M, N, A]``, log_std ``[M, A]``.
    """

    extra = "log_std"

    def __init__(self, actions: Tensor, mean: Tensor, log_std: Tensor) -> None:
        self.inv_std = torch.exp(-log_std).unsqueeze(1)  # [M, 1, A]
        self.e = (actions - mean) * self.inv_std
        self.score_output = self.e * self.inv_std
        self.score_extra = self.e * self.e - 1.0

    def select(self, tasks: slice) -> GaussianHead:
        """The head of the tasks ``tasks`` only (views)."""
        out = object.__new__(GaussianHead)
        out.inv_std, out.e = self.inv_std[tasks], self.e[tasks]
        out.score_output, out.score_extra = self.score_output[tasks], self.score_extra[tasks]
        return out

    def hessian(self, r_output: Tensor, r_extra: Tensor) -> tuple[Tensor, Tensor]:
        """(d2 log pi) applied to the output directions (R(mu), R(s)), per sample."""
        return (
            -r_output * self.inv_std * self.inv_std - 2.0 * self.score_output * r_extra,
            -2.0 * self.score_output * r_output - 2.0 * self.e * self.e * r_extra,
        )

    def fisher(self, d_output: Tensor, d_extra: Tensor) -> tuple[Tensor, Tensor]:
        """The Fisher information applied to output directions, per sample."""
        return d_output * self.inv_std * self.inv_std, 2.0 * d_extra.expand_as(d_output)


class CategoricalHead:
    """log softmax(z)_a per sample in the logits z, with p = softmax(z):

        d log pi / dz = onehot(a) - p,      d2 log pi / dz2 = -(diag(p) - p p^T),

    which is also the Fisher information's negative (it does not depend on a).
    """

    extra = None

    def __init__(self, actions: Tensor, logits: Tensor) -> None:
        self.p = torch.softmax(logits, dim=-1)
        onehot = torch.nn.functional.one_hot(actions.long(), logits.shape[-1])
        self.score_output = onehot.to(logits.dtype) - self.p
        self.score_extra = None

    def select(self, tasks: slice) -> CategoricalHead:
        """The head of the tasks ``tasks`` only (views)."""
        out = object.__new__(CategoricalHead)
        out.p, out.score_output, out.score_extra = self.p[tasks], self.score_output[tasks], None
        return out

    def fisher(self, d_output: Tensor, d_extra: None = None) -> tuple[Tensor, None]:
        """(diag(p) - p p^T) d, per sample."""
        p = self.p
        return p * d_output - p * (p * d_output).sum(-1, keepdim=True), None

    def hessian(self, r_output: Tensor, r_extra: None = None) -> tuple[Tensor, None]:
        """(d2 log pi) applied to the logit direction, per sample."""
        return -self.fisher(r_output)[0], None


Head = GaussianHead | CategoricalHead


class DiagGaussian:
    """pi(a|s) = N(a; mu(s), diag(exp(log_std))^2) over ``Box`` actions of size ``act_dim``.

    The body outputs mu ``[..., act_dim]``; the policy's ``log_std`` parameter (``[act_dim]``,
    or ``[M, act_dim]`` task-batched) is the state-independent log standard deviation.
    """

    extra = "log_std"
    """The name of the distribution's own policy parameter."""

    def __init__(self, act_dim: int) -> None:
        self.act_dim = int(act_dim)
        self.num_outputs = self.act_dim
        """The body's output size."""

    def output(self, body: Tensor, params: dict[str, Tensor]) -> GaussianOutput:
        """``(mean, log_std)`` from the body's output ``[..., A]`` (``[M, ..., A]`` batched) and
        ``params["log_std"]``, a batched ``[M, A]`` reshaped to broadcast against the mean."""
        log_std = params["log_std"]
        if log_std.dim() == 2:
            log_std = log_std.reshape(log_std.shape[0], *([1] * (body.dim() - 2)), self.act_dim)
        return body, log_std

    def noise(self, horizon: int, episodes: int, seed: int) -> Tensor:
        """eps ``[horizon, episodes, A]`` of one task (:func:`gaussian_noise`)."""
        return gaussian_noise(horizon, episodes, self.act_dim, seed)

    def sample_from_noise(self, output: GaussianOutput, noise: Tensor) -> Tensor:
        """a = mu + exp(log_std) * eps, float32 ``[..., A]``."""
        mean, log_std = output
        return mean + log_std.exp() * noise

    def take_tasks(self, output: GaussianOutput, index: Tensor) -> GaussianOutput:
        """The output of the task rows ``index`` of a task-batched output ``[M, ...]``
        (an unbatched log_std ``[A]`` is shared by all rows)."""
        mean, log_std = output
        return mean[index], (log_std[index] if log_std.dim() == 3 else log_std)

    def mode(self, output: GaussianOutput) -> Tensor:
        """The most likely action: the mean ``[..., A]``."""
        return output[0]

    def sample_numpy(self, output: GaussianOutput, rng: np.random.Generator | None) -> np.ndarray:
        """Actions ``[N, A]`` float32 for an output of N observations: the mean (``rng`` None),
        else mu + sigma * eps with eps = ``rng.standard_normal`` cast to float32."""
        mean, log_std = output
        u = mean.reshape(-1, mean.shape[-1]).numpy()
        if rng is not None:
            std = log_std.exp().reshape(-1, mean.shape[-1]).numpy()
            u = u + std * rng.standard_normal(u.shape).astype(np.float32)
        return u

    def log_prob(self, actions: Tensor, output: GaussianOutput) -> Tensor:
        """log pi(a|s) (:func:`gaussian_log_prob`)."""
        return gaussian_log_prob(actions, *output)

    def kl(self, output_p: GaussianOutput, output_q: GaussianOutput) -> Tensor:
        """KL(p || q) between two outputs (:func:`gaussian_kl`)."""
        return gaussian_kl(*output_p, *output_q)

    def detach(self, output: GaussianOutput) -> GaussianOutput:
        """The output detached and copied (the unbatched log_std is a view of a parameter)."""
        return output[0].detach().clone(), output[1].detach().clone()

    def head(self, actions: Tensor, body: Tensor, params: dict[str, Tensor]) -> GaussianHead:
        """The derivatives of log pi in the outputs at task-batched ``params``
        (:class:`GaussianHead`)."""
        return GaussianHead(actions, body, params["log_std"].detach())


class Categorical:
    """pi(a|s) = softmax(z(s))_a over ``Discrete(n)`` indices a in {0, ..., n-1}; the body's
    output z ``[..., n]`` is the logits, and the distribution has no parameter of its own."""

    extra = None

    def __init__(self, num_actions: int) -> None:
        self.num_actions = int(num_actions)
        self.num_outputs = self.num_actions

    def output(self, body: Tensor, params: dict[str, Tensor]) -> Tensor:
        """The logits: the body's output itself."""
        return body

    def noise(self, horizon: int, episodes: int, seed: int) -> Tensor:
        """Gumbel noise g ``[horizon, episodes, n]`` of one task (:func:`gumbel_noise`)."""
        return gumbel_noise(horizon, episodes, self.num_actions, seed)

    def sample_from_noise(self, logits: Tensor, noise: Tensor) -> Tensor:
        """a = argmax_b (z_b + g_b) (Gumbel-max: distributed as softmax(z)), int64 ``[...]``."""
        return (logits + noise).argmax(-1)

    def take_tasks(self, logits: Tensor, index: Tensor) -> Tensor:
        """The logits of the task rows ``index`` of a task-batched output ``[M, ...]``."""
        return logits[index]

    def mode(self, logits: Tensor) -> Tensor:
        """The most likely index argmax_a z_a ``[...]`` (int64)."""
        return logits.argmax(-1)

    def sample_numpy(self, logits: Tensor, rng: np.random.Generator | None) -> np.ndarray:
        """Indices ``[N]`` for logits of N observations: the argmax (``rng`` None), else
        Gumbel-max with float64 u = ``rng.random`` raised to the smallest normal float64."""
        z = logits.reshape(-1, logits.shape[-1]).numpy()
        if rng is not None:
            uniform = np.maximum(rng.random(z.shape), np.finfo(np.float64).tiny)
            z = z - np.log(-np.log(uniform))
        return z.argmax(-1)

    def log_prob(self, actions: Tensor, logits: Tensor) -> Tensor:
        """log pi(a|s) (:func:`categorical_log_prob`)."""
        return categorical_log_prob(actions, logits)

    def kl(self, logits_p: Tensor, logits_q: Tensor) -> Tensor:
        """KL(p || q) between two outputs (:func:`categorical_kl`)."""
        return categorical_kl(logits_p, logits_q)

    def detach(self, logits: Tensor) -> Tensor:
        """The logits detached and copied."""
        return logits.detach().clone()

    def head(self, actions: Tensor, body: Tensor, params: dict[str, Tensor]) -> CategoricalHead:
        """The derivatives of log pi in the logits (:class:`CategoricalHead`)."""
        return CategoricalHead(actions, body)


ActionDistribution = DiagGaussian | Categorical


def distribution_for(action_space: gym.Space) -> ActionDistribution:
    """The distribution for a Gymnasium action space: a 1-D ``Box`` takes :class:`DiagGaussian`
    (size ``shape[0]``), a ``Discrete`` takes :class:`Categorical` (size ``n``; its indices
    0..n-1 are shifted by ``action_space.start`` on the way to the env). Anything else raises
    a one-line ValueError."""
    if isinstance(action_space, gym.spaces.Box) and len(action_space.shape) == 1:
        return DiagGaussian(action_space.shape[0])
    if isinstance(action_space, gym.spaces.Discrete):
        return Categorical(int(action_space.n))
    raise ValueError(
        f"no policy for action space {action_space}: need a 1-D Box (Gaussian policy) "
        "or a Discrete (categorical policy)"
    )
