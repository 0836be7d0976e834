"""Checkpoints: written atomically, loaded without running code.

Writing goes to a temporary file in the same folder, then renames it over the target
(:func:`maml_rl.files.atomic_write`), so a crash, kill -9 or Ctrl-C mid-write never leaves a
truncated checkpoint. A checkpoint holds only tensors and plain data (dicts, lists, str, int,
float, bool, None); loading uses ``torch.load(weights_only=True)``, which refuses anything else,
so a crafted file cannot run code (the clipped meta-steps' Adam moments and eta, under
``meta_optimizer``, are tensors too). Checkpoints written before format 2 also hold the numpy RNG
state as a numpy array; exactly the numpy globals needed to rebuild such an array are allowed.

Loading checks what it restores before restoring anything, and every refusal is one
:class:`~maml_rl.errors.CheckpointError` naming the file: a refused pickle names the global it
holds (never torch's advice to load with ``weights_only=False``), a truncated file (read into
memory first, so torch's ``OSError`` on a cut zip is the content's fault, not the disk's) says
so, and an unknown ``format``, a negative or non-int ``iteration``, a policy whose keys or shapes
are not those of the policy its config builds, or RNG states of the wrong size say which. The
``policy`` entry is a :class:`~maml_rl.meta_sgd.MetaPolicy`'s state: theta's keys and, for a
Meta-SGD run, its learned step sizes' (``inner_step_sizes.log_alpha.N``) beside them.
"""

from __future__ import annotations

import io
import pickle
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from maml_rl.errors import CheckpointError
from maml_rl.files import atomic_write

CHECKPOINT_NAME = "checkpoint.pt"

_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(1))[0]  # numpy's array rebuilder, any version
LEGACY_NUMPY_GLOBALS: list[Any] = [
    (_RECONSTRUCT, "numpy._core.multiarray._reconstruct"),
    (_RECONSTRUCT, "numpy.core.multiarray._reconstruct"),  # written with numpy < 2
    np.ndarray,
    np.dtype,
    type(np.dtype(np.uint32)),  # numpy.dtypes.UInt32DType
]
"""What format-1 checkpoints need besides tensors and plain data: the uint32 numpy array of the
RNG state (``numpy.ndarray`` rebuilt by ``_reconstruct`` with its ``numpy.dtype``)."""


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """``torch.save`` ``state`` to ``path`` atomically (temporary file + ``os.replace``)."""
    return atomic_write(path, lambda f: torch.save(state, f))


def resolve_checkpoint(path: str | Path) -> Path:
    """The checkpoint file of ``path`` (a file, or a run folder holding ``checkpoint.pt``)."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    return path


SUPPORTED_FORMATS = (1, 2)
"""Checkpoint layouts this version reads: 1 (numpy RNG state as a numpy array), 2 (as a tensor and
plain data). A checkpoint without a ``format`` key (maml-rl always writes one) is read like 2."""


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint of :func:`save_checkpoint` (a file, or a run folder holding one).

    Never unpickles code: raises :class:`~maml_rl.errors.CheckpointError` naming the file when
    it holds anything but tensors, plain data (and a format-1 checkpoint's numpy RNG array), is
    truncated, corrupt or not a maml-rl checkpoint at all, or when its top level is not what
    maml-rl writes (a known ``format``, ``iteration`` and ``env_steps`` counts >= 0, a ``policy``
    dict of tensors, a ``config`` dict). The policy's keys and shapes are checked against the
    policy of its config by :func:`check_policy_state`, the training state by
    :func:`check_training_state`.
    """
    path = resolve_checkpoint(path)
    with open(path, "rb") as f:  # unreadable (permissions, I/O): OSError, not the content's fault
        data = f.read()
    try:  # from memory: every error below is the bytes' (torch raises OSError on some truncations)
        with torch.serialization.safe_globals(LEGACY_NUMPY_GLOBALS):
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(_refusal(path, err)) from None
    except Exception as err:  # torch raises many kinds on truncated or foreign bytes
        raise CheckpointError(
            f"{path} is not a readable checkpoint (truncated or corrupt?): {_first_line(err)}"
        ) from None
    if not isinstance(state, dict) or not {"policy", "config", "iteration"} <= set(state):
        raise CheckpointError(f"{path} is not a maml-rl checkpoint (no policy, config, iteration)")
    _check_top_level(state, path)
    return state


_GLOBAL_NAMES = (
    r"GLOBAL ([\w.]+)",  # "Unsupported global: GLOBAL x.y was not", "unsupported GLOBAL x.y whose"
    r"add_safe_globals\(\[([\w.]+)\]\)",
    r"but got <class '([\w.]+)'>",  # "Can only build ... but got <class 'x.Y'>"
)
_ADVICE = ("weights_only", "safe_globals", "trust", "documentation", "file an issue", "http")


def _refusal(path: Path, err: BaseException) -> str:
    """The one line for a pickle the weights-only unpickler refused: the global it names, never
    torch's advice (to load with ``weights_only=False``: that would run the file's code)."""
    text = str(err)
    for pattern in _GLOBAL_NAMES:
        found = re.search(pattern, text)
        if found:
            return (
                f"{path}: refused to load: it holds a {found.group(1)!r} object, and maml-rl "
                "checkpoints hold only tensors and plain data (it was altered or not written by "
                "maml-rl; loading it could run code)"
            )
    # no global named: torch's own reason, without its advice (sentences naming weights_only)
    sentences = re.split(r"(?<=[.:])\s+|\n+", text.replace("\033[1m", "").replace("\033[0m", ""))
    reason = " ".join(
        s.strip()
        for s in sentences
        if s.strip()
        and "Weights only load failed" not in s
        and not any(a in s.lower() for a in _ADVICE)
    )
    reason = reason.removeprefix("WeightsUnpickler error: ").strip() or type(err).__name__
    return (
        f"{path}: refused to load: {reason} (maml-rl checkpoints hold only tensors and plain "
        "data; it is corrupt, altered or not written by maml-rl)"
    )


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_top_level(state: dict[str, Any], path: Path) -> None:
    fmt = state.get("format", SUPPORTED_FORMATS[-1])
    if type(fmt) is not int or fmt not in SUPPORTED_FORMATS:
        raise CheckpointError(
            f"{path}: checkpoint format {fmt!r} is not one this maml-rl reads "
            f"({', '.join(map(str, SUPPORTED_FORMATS))}): written by another version, or edited"
        )
    for key in ("iteration", "env_steps"):
        if key in state and not _is_count(state[key]):
            raise CheckpointError(
                f"{path}: {key} {state[key]!r} is not a count (an int >= 0): the checkpoint was "
                "edited or is not maml-rl's"
            )
    policy = state["policy"]
    if not isinstance(policy, dict):
        raise CheckpointError(
            f"{path}: its policy is a {type(policy).__name__}, not a dict of tensors"
        )
    for key, value in policy.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"{path}: the policy's {key!r} is a {type(value).__name__}, not a tensor"
            )
    if not isinstance(state["config"], dict):
        raise CheckpointError(
            f"{path}: its config is a {type(state['config']).__name__}, not a dict of config keys"
        )


class PolicyState(Protocol):
    """What a checkpoint's ``policy`` entry is checked against and loaded into: a policy module,
    or a :class:`~maml_rl.meta_sgd.MetaPolicy` (theta and Meta-SGD's rho beside it)."""

    def state_dict(self) -> Mapping[str, torch.Tensor]:
        """The expected keys, shapes and dtypes (the checkpoint's ``policy`` layout)."""
        ...

    def load_state_dict(self, weights: Mapping[str, torch.Tensor]) -> Any:
        """Restore :meth:`state_dict`'s state."""
        ...

    def parameters(self) -> Iterable[torch.Tensor]:
        """The meta-parameters in the outer optimiser's order (its Adam moments', one each)."""
        ...


def check_policy_state(weights: dict[str, Any], policy: PolicyState, source: Any) -> None:
    """Raise :class:`CheckpointError` naming ``source`` unless ``weights`` has exactly the keys
    of ``policy.state_dict()`` (the policy, and step sizes, built from the checkpoint's config),
    each a floating tensor of the same shape; nothing is loaded."""
    if not isinstance(weights, dict):
        raise CheckpointError(
            f"{source}: its policy is a {type(weights).__name__}, not a dict of tensors"
        )
    expected = policy.state_dict()
    unknown = [k for k in weights if k not in expected]
    if unknown:
        raise CheckpointError(
            f"{source}: the policy holds {', '.join(map(repr, unknown))}, which the policy of its "
            f"config has not (it has {', '.join(map(repr, expected))}): edited, or not this "
            "config's"
        )
    missing = [k for k in expected if k not in weights]
    if missing:
        raise CheckpointError(
            f"{source}: the policy lacks {', '.join(map(repr, missing))}, which the policy of its "
            "config has: edited, or not this config's"
        )
    for key, want in expected.items():
        value = weights[key]
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"{source}: the policy's {key!r} is a {type(value).__name__}, not a tensor"
            )
        if tuple(value.shape) != tuple(want.shape):
            raise CheckpointError(
                f"{source}: the policy's {key!r} has shape {list(value.shape)}, the policy of its "
                f"config {list(want.shape)}: edited, or not this config's"
            )
        if value.is_floating_point() != want.is_floating_point() or value.is_complex():
            raise CheckpointError(
                f"{source}: the policy's {key!r} holds {value.dtype}, the policy of its config "
                f"{want.dtype}"
            )


def load_policy_state(policy: PolicyState, weights: dict[str, Any], source: Any) -> None:
    """``policy.load_state_dict(weights)`` after :func:`check_policy_state`."""
    check_policy_state(weights, policy, source)
    policy.load_state_dict(weights)


def check_training_state(
    state: dict[str, Any],
    policy: PolicyState,
    source: Any,
    meta_optimizer: bool = False,
) -> None:
    """Raise :class:`CheckpointError` naming ``source`` unless a checkpoint's state can be
    restored as a whole: the policy (:func:`check_policy_state`), ``iteration`` and
    ``env_steps`` counts, both RNG states (tried on scratch generators, never the global ones)
    and, with ``meta_optimizer`` (a clipped meta-step), its Adam moments (one per parameter of
    ``policy.parameters()``, of its shape) and eta. Nothing is restored."""
    check_policy_state(state["policy"], policy, source)
    for key in ("iteration", "env_steps"):
        if not _is_count(state.get(key)):
            raise CheckpointError(
                f"{source}: {key} {state.get(key)!r} is not a count (an int >= 0): the checkpoint "
                "was edited or is not maml-rl's"
            )
    rng = state.get("torch_rng")
    size = torch.get_rng_state().shape
    if not isinstance(rng, torch.Tensor) or rng.dtype != torch.uint8 or rng.shape != size:
        shown = (
            f"a {rng.dtype} tensor of shape {list(rng.shape)}"
            if isinstance(rng, torch.Tensor)
            else f"a {type(rng).__name__}"
        )
        raise CheckpointError(
            f"{source}: torch_rng is {shown}, not the uint8 tensor of shape {list(size)} of "
            "torch's CPU generator"
        )
    try:
        torch.Generator().set_state(rng)
    except Exception as err:
        reason = _first_line(err)
        raise CheckpointError(f"{source}: torch_rng is no generator state: {reason}") from None
    _check_numpy_rng(state.get("numpy_rng"), source)
    if meta_optimizer and "meta_optimizer" in state:
        _check_meta_optimizer(state["meta_optimizer"], policy, source)


def _check_numpy_rng(value: Any, source: Any) -> None:
    reason = None
    if isinstance(value, dict):
        keys = value.get("keys")
        if not isinstance(keys, torch.Tensor) or keys.is_floating_point() or keys.dim() != 1:
            reason = "its keys are not a 1-d integer tensor"
        elif not all(isinstance(value.get(k), int) for k in ("pos", "has_gauss")):
            reason = "its pos and has_gauss are not ints"
        elif not isinstance(value.get("cached_gaussian"), float) or value.get("name") != "MT19937":
            reason = "its name or cached_gaussian is not an MT19937 state's"
    elif not isinstance(value, (tuple, list)) or len(value) != 5:
        reason = f"it is a {type(value).__name__}, not an MT19937 state"
    if reason is None:
        try:
            np.random.RandomState().set_state(numpy_rng_from_plain(value))
        except Exception as err:
            reason = _first_line(err)
    if reason is not None:
        raise CheckpointError(f"{source}: numpy_rng is no numpy generator state: {reason}")


def _check_meta_optimizer(value: Any, policy: PolicyState, source: Any) -> None:
    shapes = [tuple(p.shape) for p in policy.parameters()]
    reason = None
    if not isinstance(value, dict):
        reason = f"it is a {type(value).__name__}, not a dict"
    elif not isinstance(value.get("inner_kl_coef"), torch.Tensor):
        reason = "its inner_kl_coef (eta) is not a tensor"
    elif "adam_step" in value:
        step, m, v = (value.get(k) for k in ("adam_step", "adam_exp_avg", "adam_exp_avg_sq"))
        if not isinstance(step, torch.Tensor) or tuple(step.shape) != (len(shapes),):
            reason = f"its adam_step is not a tensor of {len(shapes)} steps (one per parameter)"
        for name, moments in (("adam_exp_avg", m), ("adam_exp_avg_sq", v)):
            if reason is None and (
                not isinstance(moments, list)
                or len(moments) != len(shapes)
                or not all(isinstance(t, torch.Tensor) for t in moments)
                or [tuple(t.shape) for t in moments] != shapes
            ):
                reason = f"its {name} is not one tensor per parameter of the parameter's shape"
    if reason is not None:
        raise CheckpointError(f"{source}: meta_optimizer (the clipped meta-step's Adam): {reason}")


def numpy_rng_to_plain(state: tuple[Any, ...]) -> dict[str, Any]:
    """``np.random.get_state()`` as a tensor and plain data (loadable with weights_only)."""
    name, keys, pos, has_gauss, cached = state
    return {
        "name": str(name),
        "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached),
    }


def numpy_rng_from_plain(state: Any) -> tuple[Any, ...]:
    """The argument of ``np.random.set_state`` for a state of :func:`numpy_rng_to_plain` (or the
    tuple a format-1 checkpoint stored as it was)."""
    if not isinstance(state, dict):
        return tuple(state)
    keys = np.asarray(state["keys"].numpy(), dtype=np.uint32)
    return (state["name"], keys, state["pos"], state["has_gauss"], state["cached_gaussian"])
