"""MLP policies with a functional forward over explicit, optionally task-batched, parameters.

The policy of Finn et al. (2017, section 5.3) for ``Box`` actions: an MLP (default 2 x 100,
ReLU) maps an observation to the mean of a diagonal Gaussian whose log standard deviation is a
state-independent parameter (initial std 1). For ``Discrete`` actions (the bandit and tabular-MDP
families of RL^2, Duan et al. 2016), the same MLP maps an observation to the logits of a
categorical distribution (:class:`CategoricalMLPPolicy`); :func:`policy_class_for` picks the
class from an action space.

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

Params = dict[str, Tensor]

NONLINEARITIES = {"relu": torch.relu, "tanh": torch.tanh}
_LOG_2PI = math.log(2.0 * math.pi)


LEARNED_STEP_SIZES = "inner_step_sizes"
"""The submodule of a policy holding Meta-SGD's learned inner step sizes, if it has them
(:mod:`maml_rl.meta_sgd`): in ``parameters()`` and ``state_dict()``, not in :func:`theta`."""


def theta(policy: nn.Module) -> Params:
    """A policy's forward parameters theta as an ordered name -> tensor dict (shared storage):
    every parameter but the learned step sizes'."""
    prefix = LEARNED_STEP_SIZES + "."
    return {k: v for k, v in policy.named_parameters() if not k.startswith(prefix)}


def mlp_layers(sizes: Sequence[int], nonlinearity: str) -> nn.ModuleList:
    """The linear layers ``sizes[0] -> sizes[1] -> ...`` of a policy MLP, Glorot-uniform weights
    and zero biases (as rllab); ``nonlinearity`` is checked here (one clear ValueError)."""
    if nonlinearity not in NONLINEARITIES:
        raise ValueError(
            f"unknown nonlinearity {nonlinearity!r}; choose one of {sorted(NONLINEARITIES)}"
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
    act = NONLINEARITIES[nonlinearity]
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


class GaussianMLPPolicy(nn.Module):
    """pi_theta(a|s) = N(a; mu_theta(s), diag(exp(log_std))^2).

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
        super().__init__()
        if init_std <= 0:
            raise ValueError(f"init_std must be > 0, got {init_std}")
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.hidden_sizes = tuple(hidden_sizes)
        self.nonlinearity = nonlinearity
        self.layers = mlp_layers((obs_dim, *self.hidden_sizes, act_dim), nonlinearity)
        self.log_std = nn.Parameter(torch.full((act_dim,), math.log(init_std)))

    def params(self) -> Params:
        """The meta-parameters theta as an ordered name -> tensor dict (shared storage)."""
        return theta(self)

    def forward(self, obs: Tensor, params: Params | None = None) -> tuple[Tensor, Tensor]:
        """Mean and log-std of pi(.|obs).

        ``obs`` is ``[..., obs_dim]`` with unbatched ``params``, or ``[M, ..., obs_dim]`` with
        params carrying a leading task dimension M. Returns ``(mean, log_std)`` where
        ``log_std`` broadcasts against ``mean``.
        """
        p = self.params() if params is None else params
        batched = p["log_std"].dim() == 2
        lead = obs.shape[:-1]
        mean = mlp_forward(obs, p, len(self.layers), self.nonlinearity, batched)
        log_std = p["log_std"]
        if batched:
            log_std = log_std.reshape(log_std.shape[0], *([1] * (len(lead) - 1)), self.act_dim)
        return mean, log_std

    @staticmethod
    def log_prob(actions: Tensor, output: tuple[Tensor, Tensor]) -> Tensor:
        """log pi(a|s) for the forward's ``(mean, log_std)`` (:func:`gaussian_log_prob`)."""
        return gaussian_log_prob(actions, *output)

    @staticmethod
    def kl(output_p: tuple[Tensor, Tensor], output_q: tuple[Tensor, Tensor]) -> Tensor:
        """KL(p || q) between two forward outputs (:func:`gaussian_kl`)."""
        return gaussian_kl(*output_p, *output_q)


def is_task_batched(params: Params) -> bool:
    """Whether ``params`` carry a leading task dimension (weights ``[M, out, in]``), for either
    policy class (the Gaussian's ``log_std`` is then ``[M, act_dim]``; the categorical has none)."""
    return params["layers.0.weight"].dim() == 3


def replicate(params: Params, num_tasks: int) -> Params:
    """Give every parameter a leading task dimension of size ``num_tasks`` (a view, no copy).

    Gradients taken with respect to the returned tensors are per-task gradients.
    """
    return {k: v.unsqueeze(0).expand(num_tasks, *v.shape) for k, v in params.items()}


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


class CategoricalMLPPolicy(nn.Module):
    """pi_theta(a|s) = softmax(f_theta(s))_a for ``Discrete(n)`` actions a in {0, ..., n-1}.

    The MLP f_theta is built and initialised as :class:`GaussianMLPPolicy`'s (Glorot-uniform
    weights, zero biases; the last layer outputs the n logits); there is no ``log_std``.

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
        super().__init__()
        if num_actions < 1:
            raise ValueError(f"num_actions must be >= 1, got {num_actions}")
        self.obs_dim, self.num_actions = obs_dim, num_actions
        self.hidden_sizes = tuple(hidden_sizes)
        self.nonlinearity = nonlinearity
        self.layers = mlp_layers((obs_dim, *self.hidden_sizes, num_actions), nonlinearity)

    def params(self) -> Params:
        """The meta-parameters theta as an ordered name -> tensor dict (shared storage)."""
        return theta(self)

    def forward(self, obs: Tensor, params: Params | None = None) -> Tensor:
        """Logits of pi(.|obs), ``[..., num_actions]``.

        ``obs`` is ``[..., obs_dim]`` with unbatched ``params``, or ``[M, ..., obs_dim]`` with
        params carrying a leading task dimension M (weights ``[M, out, in]``): then one
        ``baddbmm`` per layer serves all M tasks.
        """
        p = self.params() if params is None else params
        return mlp_forward(obs, p, len(self.layers), self.nonlinearity, is_task_batched(p))

    @staticmethod
    def log_prob(actions: Tensor, output: Tensor) -> Tensor:
        """log pi(a|s) for the forward's logits (:func:`categorical_log_prob`)."""
        return categorical_log_prob(actions, output)

    @staticmethod
    def kl(output_p: Tensor, output_q: Tensor) -> Tensor:
        """KL(p || q) between two forward outputs (:func:`categorical_kl`)."""
        return categorical_kl(output_p, output_q)


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


MLPPolicy = GaussianMLPPolicy | CategoricalMLPPolicy
PolicyOutput = tuple[Tensor, Tensor] | Tensor
"""What a policy's forward returns: ``(mean, log_std)`` (Gaussian) or logits (categorical)."""


def detach_output(output: PolicyOutput) -> PolicyOutput:
    """A forward output with every tensor detached and copied: a copy, because an output can be
    a view of a parameter (the Gaussian's unbatched ``log_std``), which an in-place update
    (TRPO's line search) would otherwise move along."""
    if isinstance(output, tuple):
        return tuple(t.detach().clone() for t in output)
    return output.detach().clone()


def most_likely_action(output: PolicyOutput) -> Tensor:
    """The mode of pi(.|s) from a forward's output: the Gaussian's mean ``[..., act_dim]``, or
    the categorical's most likely index ``argmax_a z_a`` ``[...]`` (int64)."""
    return output[0] if isinstance(output, tuple) else output.argmax(-1)


def policy_class_for(action_space: gym.Space) -> type[GaussianMLPPolicy | CategoricalMLPPolicy]:
    """The policy class for a Gymnasium action space: a 1-D ``Box`` takes
    :class:`GaussianMLPPolicy` (output size ``shape[0]``), a ``Discrete`` takes
    :class:`CategoricalMLPPolicy` (output size ``n``; its actions are indices 0..n-1, to which a
    sampler adds ``action_space.start``). Anything else raises a one-line ValueError."""
    if isinstance(action_space, gym.spaces.Box) and len(action_space.shape) == 1:
        return GaussianMLPPolicy
    if isinstance(action_space, gym.spaces.Discrete):
        return CategoricalMLPPolicy
    raise ValueError(
        f"no policy for action space {action_space}: need a 1-D Box (Gaussian policy) "
        "or a Discrete (categorical policy)"
    )
