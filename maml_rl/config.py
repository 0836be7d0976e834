"""Training configuration: the settings groups as one validated dataclass, presets as YAML.

A config is built from a preset name or a YAML file, then ``key=value`` overrides (values are
parsed as YAML: ``inner_lr=0.5``, ``hidden_sizes=[64,64]``, ``first_order=true``).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import reprlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from maml_rl.errors import ConfigError
from maml_rl.settings import (
    GROUPS,
    MAX_INT,
    AdvantageSettings,
    BatchSettings,
    ClippedSettings,
    FamilySettings,
    InnerLoopSettings,
    PolicySettings,
    RunSettings,
    SamplerSettings,
    TRPOSettings,
    field_problem,
)

G = TypeVar("G")
DEFAULT_CONFIG_NAME = "default"
MAX_CONFIG_BYTES = 1 << 20
"""Largest config file or ``--set`` value read (1 MiB; a preset is under 1 KiB). Parsing is
pure Python, about 10-25 s for 1 MiB: the limit keeps a mistaken or hostile file from taking
minutes and gigabytes."""
MAX_NESTING = 32
"""Deepest nesting of lists and mappings in a config (a config needs 3)."""
_TYPES: dict[str, tuple[type, ...]] = {
    "bool": (bool,),
    "int": (int,),
    "float": (int, float),
    "str": (str,),
    "list[int]": (list,),
    "dict[str, Any]": (dict,),
}
_TYPE_WORDS = {
    "bool": "true or false",
    "int": "an integer",
    "float": "a number",
    "str": "a string",
    "list[int]": "a list",
    "dict[str, Any]": "a mapping",
}


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 3, 60, 60, 40
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 6


def show(value: Any, limit: int = 80) -> str:
    """``repr(value)`` for an error message, bounded: at most ``limit`` characters, never
    expanding more than a few levels and items of a nested value (a YAML alias bomb or a huge
    list stays a short line)."""
    return clip(_REPR.repr(value), limit)


def clip(text: str, limit: int = 80) -> str:
    """``text`` cut to at most ``limit`` characters (``...`` where cut)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass
class TrainConfig(
    SamplerSettings,
    ClippedSettings,
    TRPOSettings,
    AdvantageSettings,
    PolicySettings,
    InnerLoopSettings,
    BatchSettings,
    RunSettings,
    FamilySettings,
):
    """Everything a MAML run depends on (defaults: the paper's 2D-navigation settings).

    The union of the settings groups of :mod:`maml_rl.settings`, where every key is declared
    once with its default and meaning; :meth:`part` hands one group to the code that reads it.
    """

    def part(self, group: type[G]) -> G:
        """This config's values of one settings group, e.g. ``config.part(TRPOSettings)``."""
        return group(**{f.name: getattr(self, f.name) for f in dataclasses.fields(group)})

    def validate(self) -> TrainConfig:
        """Raise :class:`ConfigError` naming the first bad value; return self.

        Every key is first checked against its declared type (booleans must be true or false,
        not a string such as ``yes-please``; integers are not booleans), then against the
        choices, check and range declared with it (:func:`maml_rl.settings.setting`), then the
        rules between keys (:data:`CROSS_FIELD_RULES`).
        """
        _check_types(self)
        for f in dataclasses.fields(self):
            problem = field_problem(f, getattr(self, f.name))
            if problem is not None:
                raise ConfigError(
                    f"bad value for {f.name!r}: {show(getattr(self, f.name))} ({problem})"
                )
        for key, holds, what in CROSS_FIELD_RULES:
            if not holds(self):
                raise ConfigError(f"bad value for {key!r}: {show(getattr(self, key))} ({what})")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_types(config: TrainConfig) -> None:
    """Raise :class:`ConfigError` for the first value whose type is not its field's, for a
    float that is not finite and for an integer beyond :data:`MAX_INT`."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        declared = str(f.type)
        optional = declared.endswith(" | None")
        base = declared.removesuffix(" | None")
        if value is None and optional:
            continue
        types = _TYPES.get(base)
        if types is None:
            continue
        bad_bool = isinstance(value, bool) and bool not in types
        what = ""
        if bad_bool or not isinstance(value, types):
            what = _TYPE_WORDS[base] + (" or null" if optional else "")
        elif base == "float" and not _finite(value):  # inf, nan: a silent no-op or worse
            what = "a finite number"
        elif base == "int" and f.name != "seed" and value > MAX_INT:
            what = f"an integer <= {MAX_INT}"
        if what:
            raise ConfigError(f"bad value for {f.name!r}: {show(value)} (must be {what})")


def _finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond any float
        return False


PRESET_DIR = Path(__file__).parent / "presets"
FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}
CROSS_FIELD_RULES: tuple[tuple[str, Callable[[TrainConfig], bool], str], ...] = (
    (
        "cg_subsample",
        lambda c: c.cg_subsample == 1 or c.inner_objective != "dice",
        "must be 1 with inner_objective=dice: its curvature couples an episode's steps",
    ),
    (
        "meta_sgd",
        lambda c: c.num_inner_steps >= 1 or not c.meta_sgd,
        "learns inner step sizes: it needs num_inner_steps >= 1",
    ),
    (
        "inner_objective",
        lambda c: c.algorithm != "promp" or c.inner_objective == "lvc",
        "algorithm=promp adapts with ProMP's LVC inner objective: set inner_objective=lvc",
    ),
)
"""The rules between keys, checked after every key's own: ``(key named in the error, holds,
what)``."""


class StrictBoolLoader(yaml.SafeLoader):
    """YAML with YAML 1.2's booleans: ``true``/``false`` (any case) only. PyYAML's YAML 1.1
    also reads yes/no/on/off/y/n as booleans, so ``meta_sgd=yes`` would pass silently; here
    such a value stays a string and a boolean key rejects it with one line.

    Aliases (``*name``, also in ``<<: *name``) are refused: a config is short enough to write
    each value out, and nested aliases expand a few hundred bytes into gigabytes (the "billion
    laughs"). Nesting deeper than :data:`MAX_NESTING` levels is refused too."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None,
                None,
                f"a YAML alias (*{clip(str(event.anchor), 40)}) is not allowed in a "
                "config: write the value out",
                event.start_mark,
            )
        self.depth = getattr(self, "depth", 0) + 1
        try:
            if self.depth > MAX_NESTING:
                raise yaml.composer.ComposerError(
                    None,
                    None,
                    f"values nested deeper than {MAX_NESTING} levels",
                    self.peek_event().start_mark,
                )
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


StrictBoolLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
StrictBoolLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def load_yaml(text: str, origin: str = "a config value") -> Any:
    """``yaml.safe_load`` with :class:`StrictBoolLoader`'s booleans, no aliases and little
    nesting (configs and overrides); :class:`ConfigError` for a text over
    :data:`MAX_CONFIG_BYTES`."""
    _check_size(len(text.encode("utf-8", "surrogatepass")), origin)
    return yaml.load(text, Loader=StrictBoolLoader)


def _check_size(size: int, origin: str) -> None:
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"{origin} is {size} bytes; a config file or --set value may be at most "
            f"{MAX_CONFIG_BYTES} bytes (1 MiB)"
        )


def preset_names() -> list[str]:
    """Names of the presets shipped in ``maml_rl/presets``."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def _yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML error in one short line: what, and where (line, column)."""
    mark = getattr(err, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    return f"{clip(str(problem), 160)}{where}"


def _read_mapping(text: str, origin: str) -> dict[str, Any]:
    try:
        data = load_yaml(text, origin) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{origin} is not valid YAML: {_yaml_problem(err)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{origin} must hold a mapping of config keys, got {type(data).__name__}")
    return data


def preset_summary(name: str) -> str:
    """A preset's first comment line (what it is), e.g. ``2D navigation, the paper's settings``."""
    first = (PRESET_DIR / f"{name}.yaml").read_text().splitlines()[:1]
    return first[0].lstrip("# ").strip() if first and first[0].startswith("#") else ""


def key_docs() -> list[tuple[str, Any, str]]:
    """``(key, default, first sentence of its doc)`` for every :class:`TrainConfig` key, group
    by group, from the ``doc`` each field declares (:func:`maml_rl.settings.setting`; no torch
    import: ``--help`` stays fast)."""
    defaults = TrainConfig()
    return [
        (f.name, getattr(defaults, f.name), first_sentence(f.metadata["doc"]))
        for group in GROUPS
        for f in dataclasses.fields(group)
    ]


def first_sentence(doc: str) -> str:
    """The first sentence of a field's doc, without the reST ````code```` marks."""
    return re.split(r"\.\s+(?=[A-Z])", doc.replace("``", ""))[0]


def from_dict(values: dict[str, Any], base: TrainConfig | None = None) -> TrainConfig:
    """Apply ``values`` on top of ``base`` (defaults when None); unknown keys are errors."""
    unknown = [key for key in values if key not in FIELDS]
    if unknown:
        raise ConfigError(_unknown_keys_message(unknown))
    return dataclasses.replace(base or TrainConfig(), **values)


def _unknown_keys_message(unknown: list[Any]) -> str:
    """``unknown config key 'inner_rl'; did you mean 'inner_lr'? (...)``: the first unknown key
    with the closest valid ones, and how many more unknown keys there are."""
    key = unknown[0]
    close = difflib.get_close_matches(key, FIELDS, n=3, cutoff=0.7) if isinstance(key, str) else []
    line = f"unknown config key {show(key, 60)}"
    if close:
        line += f"; did you mean {' or '.join(map(repr, close))}?"
    if len(unknown) > 1:
        line += f" ({len(unknown) - 1} more unknown key{'s' if len(unknown) > 2 else ''})"
    return line + " (maml-rl train --help lists all keys)"


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["a=1", "b=[2,3]"]`` -> ``{"a": 1, "b": [2, 3]}`` (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {show(pair)} is not of the form key=value")
        origin = f"the value of override {show(key.strip(), 60)}"
        try:
            out[key.strip()] = load_yaml(value, origin)
        except yaml.YAMLError as err:
            raise ConfigError(f"cannot parse {origin}: {_yaml_problem(err)}") from None
    return out


def load_config(name_or_path: str | None, overrides: list[str] | None = None) -> TrainConfig:
    """Build a validated config from a preset name or a YAML file (None: :class:`TrainConfig`'s
    defaults, named ``default``), then ``key=value`` overrides."""
    if name_or_path is None:
        values: dict[str, Any] = {}
        name = DEFAULT_CONFIG_NAME
    else:
        values, name = _read_config(name_or_path)
    values.setdefault("config_name", name)
    config = from_dict(values)
    config = from_dict(parse_overrides(overrides or []), config)
    return config.validate()


def _read_config(name_or_path: str) -> tuple[dict[str, Any], str]:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise ConfigError(f"config file {show(name_or_path)} does not exist")
        _check_size(path.stat().st_size, str(path))  # before reading a huge file
        return _read_mapping(path.read_text(), str(path)), path.stem
    if name_or_path in preset_names():
        text = (PRESET_DIR / f"{name_or_path}.yaml").read_text()
        return _read_mapping(text, f"preset {name_or_path}"), name_or_path
    raise ConfigError(
        f"unknown config {show(name_or_path)}: not a YAML file and not a preset "
        f"({', '.join(preset_names())})"
    )
