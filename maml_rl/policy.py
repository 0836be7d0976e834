"""Gaussian MLP policy with a functional forward over explicit, optionally task-batched, parameters.

The policy of Finn et al. (2017, section 5.3): an MLP (default 2 x 100, ReLU) maps an
observation to the mean of a diagonal Gaussian whose log standard deviation is a
state-independent parameter (initial std 1).

Parameters are a ``dict[str, Tensor]``. Every tensor may carry a leading *task* dimension M
(one parameter set per task, e.g. after per-task adaptation); one batched matrix product per
layer then serves all M tasks at once.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

Params = dict[str, Tensor]

NONLINEARITIES = {"relu": torch.relu, "tanh": torch.tanh}
_LOG_2PI = math.log(2.0 * math.pi)


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
        if nonlinearity not in NONLINEARITIES:
            raise ValueError(
                f"unknown nonlinearity {nonlinearity!r}; choose one of {sorted(NONLINEARITIES)}"
            )
        if init_std <= 0:
            raise ValueError(f"init_std must be > 0, got {init_std}")
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.hidden_sizes = tuple(hidden_sizes)
        self.nonlinearity = nonlinearity
        sizes = (obs_dim, *self.hidden_sizes, act_dim)
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in itertools.pairwise(sizes))
        for layer in self.layers:  # Glorot-uniform weights, zero biases (as rllab)
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.log_std = nn.Parameter(torch.full((act_dim,), math.log(init_std)))

    def params(self) -> Params:
        """The meta-parameters theta as an ordered name -> tensor dict (shared storage)."""
        return dict(self.named_parameters())

    def forward(self, obs: Tensor, params: Params | None = None) -> tuple[Tensor, Tensor]:
        """Mean and log-std of pi(.|obs).

        ``obs`` is ``[..., obs_dim]`` with unbatched ``params``, or ``[M, ..., obs_dim]`` with
        params carrying a leading task dimension M. Returns ``(mean, log_std)`` where
        ``log_std`` broadcasts against ``mean``.
        """
        p = self.params() if params is None else params
        batched = p["log_std"].dim() == 2
        lead = obs.shape[:-1]
        h = obs.reshape(lead[0], -1, obs.shape[-1]) if batched else obs
        act = NONLINEARITIES[self.nonlinearity]
        n = len(self.layers)
        for i in range(n):
            w, b = p[f"layers.{i}.weight"], p[f"layers.{i}.bias"]
            h = (
                torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
                if batched
                else nn.functional.linear(h, w, b)
            )
            if i < n - 1:
                h = act(h)
        mean = h.reshape(*lead, self.act_dim)
        log_std = p["log_std"]
        if batched:
            log_std = log_std.reshape(log_std.shape[0], *([1] * (len(lead) - 1)), self.act_dim)
        return mean, log_std


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
