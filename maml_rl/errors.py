"""Errors the command line reports in one line: a user's mistake exits 2, a failure of the
machine, the cluster or the environment's numbers exits 1 (see docs/reliability.md).

* ``ValueError`` (and :class:`ConfigError`, :class:`CheckpointError`,
  :class:`RunFolderBusy`, :class:`UserEnvError`), ``FileNotFoundError``, ``FileExistsError``:
  the command asked for something that cannot be done as given (exit 2).
* :class:`RunFailure`, ``OSError``: the run could not go on (exit 1).
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the offending key or value."""


class CheckpointError(ValueError):
    """A file that is not a usable maml-rl checkpoint (corrupt, truncated, not a checkpoint, or
    holding objects other than tensors and plain data); the message names the file."""


class RunFolderBusy(FileExistsError):
    """Another process holds the run folder's lock (a second training or resume into it)."""


class RunFailure(RuntimeError):
    """A run stopped for a reason outside the command: the cluster, or numbers (rewards,
    advantages) that cannot be learned from. The message says what and where."""


class UnusableBatchError(RunFailure):
    """Rewards or advantages of a sampled batch that cannot be used (NaN, infinite, or
    advantages that vanish because their variance overflows float32)."""


class UserEnvError(ValueError):
    """A task family's code misbehaved: its constructor, ``reset_task``, ``reset``, ``step`` or
    its task space's ``sample`` raised, or returned something else than declared (observations
    of another shape than its observation space, another number of tasks). The message names
    the env id, the method and what is wrong; the exception the user's code raised, if any, is
    chained as ``__cause__`` (with its traceback)."""


class NonFiniteRolloutError(RunFailure):
    """A rollout that cannot go on because of numbers: the env returned observations that are
    not finite, or the policy's parameters or actions are not finite. The message says which
    (env id, sub-env and step, or the parameter)."""
