"""Every settings field declares its doc, range, choices and resumability with it; the config's
checks, ``--help``, the docs' key table and the resumable keys are all read from there."""

from __future__ import annotations

import dataclasses

import pytest

from maml_rl import settings
from maml_rl.config import TrainConfig, key_docs
from maml_rl.errors import ConfigError

FIELDS = [f for group in settings.GROUPS for f in dataclasses.fields(group)]
RANGED = [f for f in FIELDS if settings.has_range(f)]
CHOSEN = [f for f in FIELDS if f.metadata.get("choices")]
METADATA_KEYS = {"doc", "low", "high", "above", "below", "choices", "check", "note", "resumable"}


@pytest.mark.parametrize("f", FIELDS, ids=lambda f: f.name)
def test_every_field_is_declared_with_setting(f: dataclasses.Field) -> None:
    assert set(f.metadata) == METADATA_KEYS
    assert f.metadata["doc"].strip(), f"{f.name} has no doc"


def _outside(f: dataclasses.Field) -> list[float]:
    """Values just outside each bound ``f`` declares (of the field's own kind)."""
    m, step = f.metadata, 1 if "int" in str(f.type) else 1e-9
    out = []
    if m["low"] is not None:
        out.append(m["low"] - step)
    if m["above"] is not None:
        out.append(m["above"])
    if m["high"] is not None:
        out.append(m["high"] + step)
    if m["below"] is not None:
        out.append(m["below"])
    return out


@pytest.mark.parametrize("f", RANGED, ids=lambda f: f.name)
def test_declared_range_is_enforced(f: dataclasses.Field) -> None:
    for value in _outside(f):
        with pytest.raises(ConfigError, match=rf"bad value for '{f.name}'.*must be"):
            dataclasses.replace(TrainConfig(), **{f.name: value}).validate()


@pytest.mark.parametrize("f", RANGED, ids=lambda f: f.name)
def test_declared_bounds_themselves_are_allowed(f: dataclasses.Field) -> None:
    m = f.metadata
    for value in (m["low"], m["high"]):
        if value is not None:
            dataclasses.replace(TrainConfig(), **{f.name: value}).validate()


@pytest.mark.parametrize("f", CHOSEN, ids=lambda f: f.name)
def test_declared_choices_are_enforced(f: dataclasses.Field) -> None:
    with pytest.raises(ConfigError, match=rf"bad value for '{f.name}'.*one of"):
        dataclasses.replace(TrainConfig(), **{f.name: "no-such-choice"}).validate()


def test_resumable_keys_are_the_declared_ones() -> None:
    from maml_rl.run import RESUMABLE_KEYS

    assert RESUMABLE_KEYS == {f.name for f in FIELDS if f.metadata["resumable"]}
    assert {"num_iterations", "device", "sampler"} <= RESUMABLE_KEYS
    assert not {"seed", "inner_lr", "env_id", "algorithm"} & RESUMABLE_KEYS


def test_key_docs_are_first_sentences_of_declared_docs() -> None:
    docs = {key: doc for key, _, doc in key_docs()}
    assert docs.keys() == {f.name for f in FIELDS}
    assert docs["torch_threads"] == "torch intra-op threads (None: torch's default, one per core)"
    assert all(docs.values())
