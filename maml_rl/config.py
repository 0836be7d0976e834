"""Training configuration: the settings groups as one validated dataclass, presets as YAML.

A config is built from a preset name or a YAML file, then ``key=value`` overrides (values are
parsed as YAML: ``inner_lr=0.5``, ``hidden_sizes=[64,64]``, ``first_order=true``).
"""

from __future__ import annotations

import ast
import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from maml_rl.errors import ConfigError
from maml_rl.settings import (
    ALGORITHMS,
    GROUPS,
    HVP_METHODS,
    INNER_OBJECTIVES,
    NONLINEARITIES,
    SAMPLERS,
    AdvantageSettings,
    BatchSettings,
    ClippedSettings,
    FamilySettings,
    InnerLoopSettings,
    PolicySettings,
    RunSettings,
    SamplerSettings,
    TRPOSettings,
)

G = TypeVar("G")
DEFAULT_CONFIG_NAME = "default"
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
        not a string such as ``yes-please``; integers are not booleans), then its range.
        """
        _check_types(self)

        def need(ok: bool, key: str, what: str) -> None:
            if not ok:
                raise ConfigError(f"bad value for {key!r}: {getattr(self, key)!r} ({what})")

        for key in (
            "num_iterations",
            "meta_batch_size",
            "episodes_per_task",
            "cg_iters",
            "ls_max_steps",
            "checkpoint_every",
            "outer_steps",
        ):
            value = getattr(self, key)
            need(
                isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                key,
                "must be an integer >= 1",
            )
        need(
            isinstance(self.num_inner_steps, int)
            and not isinstance(self.num_inner_steps, bool)
            and self.num_inner_steps >= 0,
            "num_inner_steps",
            "must be an integer >= 0 (0: multi-task TRPO without adaptation)",
        )
        need(isinstance(self.env_id, str) and bool(self.env_id), "env_id", "must be a string")
        need(isinstance(self.env_kwargs, dict), "env_kwargs", "must be a mapping")
        need(
            isinstance(self.seed, int) and not isinstance(self.seed, bool) and self.seed >= 0,
            "seed",
            "must be an integer >= 0",
        )
        for key in (
            "inner_lr",
            "init_std",
            "max_kl",
            "ls_backtrack_ratio",
            "outer_lr",
            "inner_kl_target",
        ):
            value = getattr(self, key)
            need(
                isinstance(value, int | float) and not isinstance(value, bool) and value > 0,
                key,
                "must be a number > 0",
            )
        need(self.ls_backtrack_ratio < 1, "ls_backtrack_ratio", "must be < 1")
        need(
            isinstance(self.cg_damping, int | float) and self.cg_damping >= 0,
            "cg_damping",
            "must be a number >= 0",
        )
        need(0 < self.gamma <= 1, "gamma", "must be in (0, 1]")
        need(0 <= self.gae_lambda <= 1, "gae_lambda", "must be in [0, 1]")
        need(
            self.inner_objective in INNER_OBJECTIVES,
            "inner_objective",
            f"one of {list(INNER_OBJECTIVES)}",
        )
        need(self.nonlinearity in NONLINEARITIES, "nonlinearity", f"one of {list(NONLINEARITIES)}")
        need(0 < self.cg_subsample <= 1, "cg_subsample", "must be in (0, 1]")
        need(
            self.cg_subsample == 1 or self.inner_objective != "dice",
            "cg_subsample",
            "must be 1 with inner_objective=dice: its curvature couples an episode's steps",
        )
        need(
            self.num_inner_steps >= 1 or not self.meta_sgd,
            "meta_sgd",
            "learns inner step sizes: it needs num_inner_steps >= 1",
        )
        need(self.hvp in HVP_METHODS, "hvp", f"one of {list(HVP_METHODS)}")
        need(self.algorithm in ALGORITHMS, "algorithm", f"one of {list(ALGORITHMS)}")
        need(0 < self.clip_eps < 1, "clip_eps", "must be in (0, 1)")
        need(self.inner_kl_coef >= 0, "inner_kl_coef", "must be a number >= 0")
        need(
            self.algorithm != "promp" or self.inner_objective == "lvc",
            "inner_objective",
            "algorithm=promp adapts with ProMP's LVC inner objective: set inner_objective=lvc",
        )
        need(
            isinstance(self.hidden_sizes, list)
            and len(self.hidden_sizes) > 0
            and all(isinstance(h, int) and h > 0 for h in self.hidden_sizes),
            "hidden_sizes",
            "must be a non-empty list of positive integers",
        )
        need(self.device == "cpu" or self.device.startswith("cuda"), "device", "cpu or cuda[:N]")
        for key in ("max_episode_steps", "num_threads", "torch_threads"):
            value = getattr(self, key)
            need(
                value is None or (isinstance(value, int) and value >= 1),
                key,
                "must be null or an integer >= 1",
            )
        need(self.sampler in SAMPLERS, "sampler", f"one of {list(SAMPLERS)}")
        need(
            isinstance(self.ray_address, str) and bool(self.ray_address),
            "ray_address",
            "local, auto or a cluster address",
        )
        for key, low in (("num_workers", 1), ("ray_max_retries", 0)):
            value = getattr(self, key)
            need(
                isinstance(value, int) and not isinstance(value, bool) and value >= low,
                key,
                f"must be an integer >= {low}",
            )
        need(
            isinstance(self.ray_timeout_s, int | float)
            and not isinstance(self.ray_timeout_s, bool)
            and self.ray_timeout_s > 0,
            "ray_timeout_s",
            "must be a number > 0",
        )
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_types(config: TrainConfig) -> None:
    """Raise :class:`ConfigError` for the first value whose type is not its field's."""
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
        if bad_bool or not isinstance(value, types):
            what = _TYPE_WORDS[base] + (" or null" if optional else "")
            raise ConfigError(f"bad value for {f.name!r}: {value!r} (must be {what})")


PRESET_DIR = Path(__file__).parent / "presets"
SETTINGS_SOURCE = Path(__file__).parent / "settings.py"
FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


class StrictBoolLoader(yaml.SafeLoader):
    """YAML with YAML 1.2's booleans: ``true``/``false`` (any case) only. PyYAML's YAML 1.1
    also reads yes/no/on/off/y/n as booleans, so ``meta_sgd=yes`` would pass silently; here
    such a value stays a string and a boolean key rejects it with one line."""


StrictBoolLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
StrictBoolLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` with :class:`StrictBoolLoader`'s booleans (configs and overrides)."""
    return yaml.load(text, Loader=StrictBoolLoader)


def preset_names() -> list[str]:
    """Names of the presets shipped in ``maml_rl/presets``."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def _read_mapping(text: str, origin: str) -> dict[str, Any]:
    try:
        data = load_yaml(text) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{origin} is not valid YAML: {problem}{where}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{origin} must hold a mapping of config keys, got {type(data).__name__}")
    return data


def preset_summary(name: str) -> str:
    """A preset's first comment line (what it is), e.g. ``2D navigation, the paper's settings``."""
    first = (PRESET_DIR / f"{name}.yaml").read_text().splitlines()[:1]
    return first[0].lstrip("# ").strip() if first and first[0].startswith("#") else ""


def key_docs() -> list[tuple[str, Any, str]]:
    """``(key, default, first sentence of its docstring)`` for every :class:`TrainConfig` key,
    group by group, read from the source of :mod:`maml_rl.settings` (no torch import:
    ``--help`` stays fast)."""
    tree = ast.parse(Path(SETTINGS_SOURCE).read_text())
    docs: dict[str, str] = {}
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
        body = cls.body
        for node, after in zip(body, [*body[1:], None]):
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                is_doc = isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                text = " ".join(str(after.value.value).split()) if is_doc else ""
                docs[node.target.id] = re.split(r"\.\s+(?=[A-Z])", text.replace("``", ""))[0]
    defaults = TrainConfig()
    return [
        (f.name, getattr(defaults, f.name), docs.get(f.name, ""))
        for group in GROUPS
        for f in dataclasses.fields(group)
    ]


def from_dict(values: dict[str, Any], base: TrainConfig | None = None) -> TrainConfig:
    """Apply ``values`` on top of ``base`` (defaults when None); unknown keys are errors."""
    unknown = sorted(set(values) - FIELDS)
    if unknown:
        raise ConfigError(f"unknown config key(s) {unknown}; valid keys: {sorted(FIELDS)}")
    return dataclasses.replace(base or TrainConfig(), **values)


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["a=1", "b=[2,3]"]`` -> ``{"a": 1, "b": [2, 3]}`` (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {pair!r} is not of the form key=value")
        try:
            out[key.strip()] = load_yaml(value)
        except yaml.YAMLError as err:
            raise ConfigError(f"cannot parse the value of override {pair!r}: {err}") from err
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
            raise ConfigError(f"config file {name_or_path!r} does not exist")
        return _read_mapping(path.read_text(), str(path)), path.stem
    if name_or_path in preset_names():
        text = (PRESET_DIR / f"{name_or_path}.yaml").read_text()
        return _read_mapping(text, f"preset {name_or_path}"), name_or_path
    raise ConfigError(
        f"unknown config {name_or_path!r}: not a YAML file and not a preset "
        f"({', '.join(preset_names())})"
    )
