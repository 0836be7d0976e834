"""MLP policies with a functional forward over explicit, optionally task-batched, parameters.

The policy of Finn et al. (2017, section 5.3) for ``Box`` actions: an MLP (default 2 x 100,
ReLU) maps an observation to the mean of a diagonal Gaussian whose log standard deviation is a
state-independent parameter (initial std 1). For ``Discrete`` actions (the bandit and tabular-MDP
families of RL^2, Duan et al. 2016), the same MLP maps an observation to the logits of a
categorical distribution (:class:`CategoricalMLPPolicy`). Both are an :class:`MLPPolicy`: the
body, and the action distribution it parameterises (``policy.distribution``, from
:mod:`maml_rl.distributions`), which owns everything that depends on the kind;
:func:`policy_class_for` picks the class from an action space, :func:`make_mlp_policy` builds one.

Parameters are a ``dict[str, Tensor]``. Every tensor may carry a leading *task* dimension M
(one parameter set per task, e.g. after per-task adaptation); one batched matrix product per
layer then serves all M tasks at once.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import gymnasium as gym
import torch
from torch import Tensor, nn

from maml_rl.distributions import (
    ActionDistribution,
    Categorical,
    DiagGaussian,
    categorical_kl,
    categorical_log_prob,
    distribution_for,
    gaussian_kl,
    gaussian_log_prob,
)
from maml_rl.settings import NONLINEARITIES

Params = dict[str, Tensor]

ACTIVATIONS = {name: getattr(torch, name) for name in NONLINEARITIES}
"""The activation function of each name :data:`maml_rl.settings.NONLINEARITIES` declares
(``torch.relu``, ``torch.tanh``)."""


def mlp_layers(sizes: Sequence[int], nonlinearity: str) -> nn.ModuleList:
    """The linear layers ``sizes[0] -> sizes[1] -> ...`` of a policy MLP, Glorot-uniform weights
    and zero biases (as rllab); ``nonlinearity`` is checked here (one clear ValueError)."""
    if nonlinearity not in ACTIVATIONS:
        raise ValueError(
            f"unknown nonlinearity {nonlinearity!r}; choose one of {sorted(ACTIVATIONS)}"
        )
    layers = nn.ModuleList(nn.Linear(i, o) for i, o in itertools.pairwise(sizes))
    for layer in layers:
        nn.init.xavier_uniform_(layer.weight)
        nn.init.zeros_(layer.bias)
    return layers


def mlp_forward(
    obs: Tensor, params: Params, num_layers: int, nonlinearity: str, batched: bool
) -> Tensor:
    """The MLP ``layers.0`` .. ``layers.{num_layers-1}`` of ``params`` applied to ``obs``.

    Unbatched: ``obs [..., in]``, weights ``[out, in]``, one ``linear`` per layer. Batched:
    ``obs [M, ..., in]``, weights ``[M, out, in]``, biases ``[M, out]``; the middle dimensions
    are flattened and one ``baddbmm`` per layer serves all M tasks. Returns ``[..., out]``
    (``[M, ..., out]`` batched); the nonlinearity follows every layer but the last.
    """
    lead = obs.shape[:-1]
    h = obs.reshape(lead[0], -1, obs.shape[-1]) if batched else obs
    act = ACTIVATIONS[nonlinearity]
    for i in range(num_layers):
        w, b = params[f"layers.{i}.weight"], params[f"layers.{i}.bias"]
        h = (
            torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
            if batched
            else nn.functional.linear(h, w, b)
        )
        if i < num_layers - 1:
            h = act(h)
    return h.reshape(*lead, h.shape[-1])


class MLPPolicy(nn.Module):
    """pi_theta(a|s) = D(f_theta(s)): an MLP body f_theta whose output parameterises the action
    distribution D (``self.distribution``, :mod:`maml_rl.distributions`), which owns sampling,
    the mode, ``log_prob``, ``kl`` and the curvature heads. The subclasses only build it:
    :class:`GaussianMLPPolicy` (Box) and :class:`CategoricalMLPPolicy` (Discrete).

    The body is ``layers.0`` .. ``layers.{L-1}`` (Glorot-uniform weights, zero biases); a
    distribution with a parameter of its own (the Gaussian's ``log_std``) has it registered
    after the layers by the subclass, so ``theta`` keeps the layers-first order.
    """

    distribution: ActionDistribution

    def __init__(
        self,
        obs_dim: int,
        distribution: ActionDistribution,
        hidden_sizes: Sequence[int],
        nonlinearity: str,
    ) -> None:
        super().__init__()
        self.obs_dim = obs_dim
        self.distribution = distribution
        self.hidden_sizes = tuple(hidden_sizes)
        self.nonlinearity = nonlinearity
        sizes = (obs_dim, *self.hidden_sizes, distribution.num_outputs)
        self.layers = mlp_layers(sizes, nonlinearity)

    def params(self) -> Params:
        """theta, the forward's parameters, as an ordered name -> tensor dict (shared storage):
        all of the policy's parameters (Meta-SGD's step sizes are kept beside it,
        :mod:`maml_rl.meta_sgd`)."""
        return dict(self.named_parameters())

    def forward(self, obs: Tensor, params: Params | None = None) -> PolicyOutput:
        """The distribution's output for ``obs``: ``(mean, log_std)`` (Gaussian, ``log_std``
        broadcasting against ``mean``) or the logits ``[..., n]`` (categorical).

        ``obs`` is ``[..., obs_dim]`` with unbatched ``params``, or ``[M, ..., obs_dim]`` with
        params carrying a leading task dimension M (weights ``[M, out, in]``): then one
        ``baddbmm`` per layer serves all M tasks.
        """
        p = self.params() if params is None else params
        body = mlp_forward(obs, p, len(self.layers), self.nonlinearity, is_task_batched(p))
        return self.distribution.output(body, p)

    def log_prob(self, actions: Tensor, output: PolicyOutput) -> Tensor:
        """log pi(a|s) for the forward's output (the distribution's ``log_prob``)."""
        return self.distribution.log_prob(actions, output)

    def kl(self, output_p: PolicyOutput, output_q: PolicyOutput) -> Tensor:
        """KL(p || q) between two forward outputs (the distribution's ``kl``)."""
        return self.distribution.kl(output_p, output_q)


class GaussianMLPPolicy(MLPPolicy):
    """pi_theta(a|s) = N(a; mu_theta(s), diag(exp(log_std))^2) (:class:`DiagGaussian`).

    Args:
        obs_dim: observation size.
        act_dim: action size.
        hidden_sizes: widths of the hidden layers (paper: (100, 100)).
        nonlinearity: ``"relu"`` (paper) or ``"tanh"``.
        init_std: initial standard deviation of every action dimension (paper: 1.0), > 0.
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden_sizes: Sequence[int] = (100, 100),
        nonlinearity: str = "relu",
        init_std: float = 1.0,
    ) -> None:
        if init_std <= 0:
            raise ValueError(f"init_std must be > 0, got {init_std}")
        super().__init__(obs_dim, DiagGaussian(act_dim), hidden_sizes, nonlinearity)
        self.act_dim = act_dim
        self.log_std = nn.Parameter(torch.full((act_dim,), math.log(init_std)))


class CategoricalMLPPolicy(MLPPolicy):
    """pi_theta(a|s) = softmax(f_theta(s))_a for ``Discrete(n)`` actions a in {0, ..., n-1}
    (:class:`Categorical`); the last layer outputs the n logits, and there is no ``log_std``.

    Args:
        obs_dim: observation size.
        num_actions: number of actions n (>= 1).
        hidden_sizes: widths of the hidden layers.
        nonlinearity: ``"relu"`` or ``"tanh"``.
    """

    def __init__(
        self,
        obs_dim: int,
        num_actions: int,
        hidden_sizes: Sequence[int] = (100, 100),
        nonlinearity: str = "relu",
    ) -> None:
        if num_actions < 1:
            raise ValueError(f"num_actions must be >= 1, got {num_actions}")
        super().__init__(obs_dim, Categorical(num_actions), hidden_sizes, nonlinearity)
        self.num_actions = num_actions


def is_task_batched(params: Params) -> bool:
    """Whether ``params`` carry a leading task dimension (weights ``[M, out, in]``), for either
    policy class (the Gaussian's ``log_std`` is then ``[M, act_dim]``; the categorical has none)."""
    return params["layers.0.weight"].dim() == 3


def replicate(params: Params, num_tasks: int) -> Params:
    """Give every parameter a leading task dimension of size ``num_tasks`` (a view, no copy).

    Gradients taken with respect to the returned tensors are per-task gradients.
    """
    return {k: v.unsqueeze(0).expand(num_tasks, *v.shape) for k, v in params.items()}


PolicyOutput = tuple[Tensor, Tensor] | Tensor
"""What a policy's forward returns: ``(mean, log_std)`` (Gaussian) or logits (categorical)."""


_POLICY_CLASSES: dict[type, type[MLPPolicy]] = {
    DiagGaussian: GaussianMLPPolicy,
    Categorical: CategoricalMLPPolicy,
}


def policy_class_for(action_space: gym.Space) -> type[MLPPolicy]:
    """The policy class for a Gymnasium action space: that of its distribution
    (:func:`~maml_rl.distributions.distribution_for`): :class:`GaussianMLPPolicy` for a 1-D
    ``Box``, :class:`CategoricalMLPPolicy` for a ``Discrete``; a one-line ValueError else."""
    return _POLICY_CLASSES[type(distribution_for(action_space))]


def make_mlp_policy(
    obs_dim: int,
    action_space: gym.Space,
    hidden_sizes: Sequence[int],
    nonlinearity: str,
    init_std: float,
) -> MLPPolicy:
    """A fresh policy for ``action_space`` (class by :func:`policy_class_for`), its output size
    the distribution's; ``init_std`` is the Gaussian's (a categorical policy has no std)."""
    distribution = distribution_for(action_space)
    if isinstance(distribution, DiagGaussian):
        return GaussianMLPPolicy(
            obs_dim, distribution.act_dim, hidden_sizes, nonlinearity, init_std
        )
    return CategoricalMLPPolicy(obs_dim, distribution.num_actions, hidden_sizes, nonlinearity)


__all__ = [
    "ACTIVATIONS",
    "CategoricalMLPPolicy",
    "GaussianMLPPolicy",
    "MLPPolicy",
    "Params",
    "PolicyOutput",
    "categorical_kl",
    "categorical_log_prob",
    "gaussian_kl",
    "gaussian_log_prob",
    "is_task_batched",
    "make_mlp_policy",
    "mlp_forward",
    "mlp_layers",
    "policy_class_for",
    "replicate",
]
