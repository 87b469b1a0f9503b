"""YAML files and ``key=value`` overrides -> an :class:`ExperimentConfig`, and back to YAML.

A YAML file fills the config section by section; command-line overrides such as
``teacher.train.steps=200`` are applied on top; the *resolved* config is saved beside every
artifact so a result can always be traced to what produced it. Unknown keys are errors (with a
did-you-mean), never silently ignored: a typo in a config must not cost a training run.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import asdict, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from tsdfm.config.schema import ExperimentConfig
from tsdfm.errors import TsdfmError


def _did_you_mean(key: str, options: list[str]) -> str:
    close = difflib.get_close_matches(key, options, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert a YAML value to the annotated type, with a clear error when impossible."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except TsdfmError as e:
                errors.append(str(e))
        raise TsdfmError(errors[0] if errors else f"{where}: bad value {value!r}")
    if is_dataclass(tp):
        if not isinstance(value, dict):
            raise TsdfmError(f"{where} must be a mapping of keys, got {value!r}")
        return from_dict(tp, value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise TsdfmError(f"{where} must be true or false, got {value!r}")
    if tp in (int, float):
        if tp is float and isinstance(value, str):
            # PyYAML follows YAML 1.1, where "3e-4" (no dot) is a string, not a float; every
            # user writes learning rates that way, in files and in overrides alike.
            try:
                value = float(value.strip())
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float):
            kind = "an integer" if tp is int else "a number"
            raise TsdfmError(f"{where} must be {kind}, got {value!r}")
        # .inf/.nan are valid YAML floats but no setting means them; NaN would even pass every
        # range check (all comparisons with NaN are false).
        if isinstance(value, float) and not math.isfinite(value):
            raise TsdfmError(f"{where} must be a finite number, got {value!r}")
        if tp is int and int(value) != value:
            raise TsdfmError(f"{where} must be an integer, got {value!r}")
        try:
            return tp(value)
        except OverflowError:  # an integer with hundreds of digits for a float setting
            raise TsdfmError(f"{where} must be a finite number, got {value!r:.20}...") from None
    if tp is str:
        if not isinstance(value, str):
            raise TsdfmError(f"{where} must be a string, got {value!r}")
        return value
    if origin is list:
        (inner,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise TsdfmError(f"{where} must be a list, got {value!r}")
        return [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def from_dict(cls: type, data: dict[str, Any], where: str = "config") -> Any:
    """Build dataclass ``cls`` from a (possibly partial) mapping; unknown keys are errors."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise TsdfmError(
                f"unknown config key {where}.{key}{_did_you_mean(key, names)}; "
                f"valid keys here: {', '.join(names)}"
            )
        kwargs[key] = _coerce(value, hints[key], f"{where}.{key}")
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    return asdict(cfg)


def _set_path(tree: dict[str, Any], dotted: str, value: Any, cls: type) -> None:
    parts = dotted.split(".")
    node, node_cls, where = tree, cls, "config"
    for i, part in enumerate(parts):
        names = [f.name for f in fields(node_cls)] if is_dataclass(node_cls) else []
        if part not in names:
            raise TsdfmError(
                f"unknown config key {where}.{part}{_did_you_mean(part, names)}; "
                f"valid keys here: {', '.join(names)}"
            )
        hint = typing.get_type_hints(node_cls)[part]
        where = f"{where}.{part}"
        if i == len(parts) - 1:
            node[part] = value
        else:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise TsdfmError(f"{where} is not a section; cannot set {dotted}")
            node_cls = hint


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    out = []
    for item in overrides:
        if "=" not in item:
            raise TsdfmError(
                f"override {item!r} must look like key=value (e.g. teacher.train.steps=100)"
            )
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except (yaml.YAMLError, ValueError, RecursionError):  # e.g. a 5,000-digit integer
            value = raw
        out.append((key.strip(), value))
    return out


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read a YAML config (or the built-in defaults when ``path`` is None) and apply overrides."""
    tree: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise TsdfmError(f"config file not found: {path} (see configs/ for the built-in ones)")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, ValueError, RecursionError) as e:
            raise TsdfmError(f"config file {path} is not valid YAML: {e}") from e
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise TsdfmError(f"config file {path} must hold a mapping at the top level")
        tree = loaded
        tree.setdefault("name", path.stem)
    for key, value in parse_overrides(overrides or []):
        _set_path(tree, key, value, ExperimentConfig)
    return from_dict(ExperimentConfig, tree).validate()


def save_config(cfg: Any, path: Path) -> None:
    from tsdfm.artifacts import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(to_dict(cfg), sort_keys=False))


def replace(cfg: Any, **changes: Any) -> Any:
    return dataclasses.replace(cfg, **changes)
