"""maml-rl: Model-Agnostic Meta-Learning for reinforcement learning.

The Python API (imported on first use, so that ``import maml_rl`` and ``maml-rl --help`` stay
fast): :func:`load_config`, :func:`train`, :func:`resume`, :func:`load_policy`, :func:`make_env`,
:func:`adapt` (returns an :class:`AdaptedPolicy` whose ``act`` gives env actions) and
:class:`TrainConfig`. See the README's "Python API" section.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {
    "TrainConfig": "maml_rl.config",
    "load_config": "maml_rl.config",
    "train": "maml_rl.run",
    "resume": "maml_rl.run",
    "load_policy": "maml_rl.run",
    "make_env": "maml_rl.api",
    "adapt": "maml_rl.api",
    "AdaptedPolicy": "maml_rl.api",
}
__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'maml_rl' has no attribute {name!r}")
