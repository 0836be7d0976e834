"""Whether a run fits in memory: a cheap lower bound of what it keeps, checked at start-up.

A config's sizes (``meta_batch_size``, ``episodes_per_task``, ``hidden_sizes``, ...) are
integers without an upper bound of their own; one too big used to end, after a minute or
more of allocating, in a ``MemoryError`` traceback. :func:`check_memory` estimates what one
meta-iteration keeps and refuses the run (:class:`~maml_rl.errors.ConfigError`, one line)
when that cannot fit in the memory the machine has available now. The estimate is a lower
bound (float32 tensors only; no env state, no allocator overhead), so a run it passes may
still be short of memory, but a run it refuses cannot fit.

What is counted, with N = meta_batch_size x episodes_per_task x H samples per batch and
B = num_inner_steps + 1 batches (the inner steps' and the post-update one) per iteration:

* episode buffers: each batch as sampled and as loss inputs, 2 x N x (obs + act + 2) floats;
* the policy: its P parameters, their gradient and the conjugate gradient's vectors (8 P),
  and the adapted parameters theta'_i of every task and inner step (meta_batch_size x
  num_inner_steps x P);
* activations the meta-step keeps for its backward passes: 2 x N x sum(hidden_sizes) floats
  per batch.

On ``device=cuda`` the learner's part (the policy, activations and loss inputs) is compared
with the GPU's free memory and the sampled batches with the machine's.
"""

from __future__ import annotations

import itertools
import os
from typing import Any

from maml_rl.errors import ConfigError

FLOAT_BYTES = 4
"""float32, every tensor of a run."""


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation now: /proc/meminfo's MemAvailable, else
    the free physical pages (``os.sysconf``); None when neither can be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def memory_estimate(
    config: Any, obs_dim: int, act_dim: int, horizon: int, out_dim: int | None = None
) -> tuple[int, int]:
    """``(sampled batches, learner)`` bytes a run of ``config`` keeps at least (see the
    module's docstring); ``out_dim``: the policy's output width (default ``act_dim``)."""
    batches = config.num_inner_steps + 1
    samples = config.meta_batch_size * config.episodes_per_task * horizon
    sizes = [obs_dim, *config.hidden_sizes, out_dim or act_dim]
    params = sum((i + 1) * o for i, o in itertools.pairwise(sizes)) + act_dim
    step_floats = obs_dim + act_dim + 2  # observation, action, reward or advantage, mask
    sampled = batches * samples * step_floats
    learner = (
        batches * samples * step_floats  # the loss inputs
        + batches * samples * 2 * sum(config.hidden_sizes)  # kept activations
        + (8 + config.meta_batch_size * config.num_inner_steps) * params
    )
    return sampled * FLOAT_BYTES, learner * FLOAT_BYTES


def check_memory(config: Any, family: Any, device: Any) -> None:
    """Refuse a run whose :func:`memory_estimate` exceeds the available memory (one line:
    the estimate, the memory available and the keys that set it). ``family``: the run's
    :class:`~maml_rl.family.TaskFamily` (its spaces and horizon); ``device``: the learner's
    ``torch.device`` (a CUDA index beyond the devices torch sees is refused here too)."""
    obs_space, act_space = family.observation_space, family.action_space
    obs_dim = _width(getattr(obs_space, "shape", None))
    n = getattr(act_space, "n", None)
    act_dim = 1 if n is not None else _width(getattr(act_space, "shape", None))
    sampled, learner = memory_estimate(
        config, obs_dim, act_dim, family.horizon, int(n) if n is not None else None
    )
    where = [("this machine", available_memory(), sampled + learner)]
    if getattr(device, "type", "cpu") == "cuda":
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count and device.index is not None and device.index >= count:
            seen = "1 CUDA device: cuda:0" if count == 1 else f"{count} CUDA devices: cuda:0.."
            seen += "" if count == 1 else f"cuda:{count - 1}"
            raise ConfigError(f"bad value for 'device': {str(device)!r} (torch sees {seen})")
        free = torch.cuda.mem_get_info(device)[0] if count else None
        where = [("this machine", where[0][1], sampled), (f"the GPU ({device})", free, learner)]
    for name, available, needed in where:
        if available is not None and needed > available:
            raise ConfigError(
                f"this run needs at least {_size(needed)} of memory but {name} has "
                f"{_size(available)} available (meta_batch_size={config.meta_batch_size} x "
                f"episodes_per_task={config.episodes_per_task} x H={family.horizon} samples "
                f"per batch, {config.num_inner_steps + 1} batches, "
                f"hidden_sizes={_short(config.hidden_sizes)}): make them smaller"
            )


def _width(shape: Any) -> int:
    width = 1
    for d in shape or ():
        width *= int(d)
    return width


def _size(n: int) -> str:
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n / 2**10:.3g} KiB"


def _short(sizes: list[int]) -> str:
    text = str(sizes)
    return text if len(text) <= 40 else text[:37] + "..."
