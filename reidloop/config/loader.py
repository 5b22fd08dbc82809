"""YAML → typed dataclass loading with validation that names the file and field.

Every config section is a plain ``@dataclass`` whose ``__post_init__`` checks its
own values; this module only maps nested dicts onto those classes, rejecting
unknown keys and wrong types with a message such as::

    tune_configs/x.yaml: dral.kappa: expected int, got 'fifteen'
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Iterator, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value is missing, unknown or invalid."""


YAML_BOOL_WORDS = {False: {"off", "no", "false", "n"}, True: {"on", "yes", "true", "y"}}


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def coerce(value: Any, tp: Any, where: str) -> Any:
    """``value`` as type ``tp`` (a field's annotation); ConfigError naming ``where`` if it is not one."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} matches none of {args}")
    if origin is typing.Literal:
        if isinstance(value, bool) and not any(isinstance(a, bool) for a in args):
            # YAML 1.1 reads off/no/false (on/yes/true) as booleans: `amp: off` means the choice "off"
            spelled = [a for a in args if isinstance(a, str) and a.lower() in YAML_BOOL_WORDS[value]]
            if len(spelled) == 1:
                return spelled[0]
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for section {_type_name(tp)}, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item_tp = args[0] if args else Any
        items = [coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected int, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads "5e-6" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def _removed(cls: type) -> dict[str, str]:
    """A config class's ``REMOVED`` (ClassVar): keys of earlier versions → what to write instead."""
    return getattr(cls, "REMOVED", {})


def from_dict(cls: type[T], data: dict, where: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and bad types raise ConfigError."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    prefix = f"{where}." if where else ""
    for name in unknown:  # a key an earlier version had: say what replaced it
        if name in _removed(cls):
            raise ConfigError(f"{prefix}{name}: {_removed(cls)[name]}")
    if unknown:
        raise ConfigError(
            f"{prefix}{unknown[0]}: unknown key (known keys of {_type_name(cls)}: {', '.join(sorted(fields))})"
        )
    kwargs = {}
    for name, value in data.items():
        key = f"{where}.{name}" if where else name
        kwargs[name] = coerce(value, hints[name], key)
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        msg = str(exc)
        raise ConfigError(f"{where}.{msg}" if where and not msg.startswith(where) else msg) from None


def field_type(cls: type, dotted: str, where: str | None = None) -> Any:
    """The type of the field ``dotted`` (e.g. ``dral.kmax``) of dataclass ``cls``; ConfigError naming
    ``where`` (default: ``dotted``) when there is no such field."""
    where = where or dotted
    tp: Any = cls
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        if not (isinstance(tp, type) and dataclasses.is_dataclass(tp)):
            raise ConfigError(f"{where}: unknown parameter ({'.'.join(parts[:i])} is not a section)")
        names = {f.name for f in dataclasses.fields(tp) if f.init}
        if part not in names and part in _removed(tp):
            raise ConfigError(f"{where}: {_removed(tp)[part]}")
        if part not in names:
            known_in = ".".join(parts[:i]) or _type_name(cls)
            raise ConfigError(f"{where}: unknown parameter (known in {known_in}: {', '.join(sorted(names))})")
        tp = typing.get_type_hints(tp)[part]
    return tp


def to_dict(obj: Any) -> Any:
    """Dataclass → plain dict/list tree (YAML- and JSON-serialisable)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def set_dotted(tree: dict, dotted: str, value: Any) -> None:
    """``tree[a][b][c] = value`` for ``dotted`` = ``a.b.c``, creating the sections on the way."""
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted}: {k} is not a section")
    node[keys[-1]] = value


def apply_overrides(tree: dict, overrides: list[str] | None) -> dict:
    """Apply ``section.key=value`` strings (values parsed as YAML) to a dict tree."""
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected section.key=value")
        dotted, raw = item.split("=", 1)
        raw = raw.strip()
        set_dotted(tree, dotted.strip(), yaml.safe_load(raw) if raw != "" else None)
    return tree


def merge_tree(tree: dict, over: dict) -> dict:
    """A copy of ``tree`` with the mapping ``over`` merged in, section by section; a dotted key is its
    section path (``{"dral.ns": 6}`` is ``{"dral": {"ns": 6}}``)."""
    out = copy.deepcopy(tree)
    for k, v in over.items():
        if "." in k:
            head, rest = k.split(".", 1)
            k, v = head, {rest: v}
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge_tree(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


@contextlib.contextmanager
def config_errors(label: str) -> Iterator[None]:
    """Re-raise a ConfigError of the block prefixed with ``label`` (the file it came from)."""
    try:
        yield
    except ConfigError as exc:
        raise ConfigError(f"{label}: {exc}") from None


def build_config(cls: type[T], tree: dict, overrides: list[str] | dict | None = None,
                 label: str = "<defaults>") -> T:
    """``cls`` from a dict tree plus overrides: ``section.key=value`` strings (command line) or a mapping
    merged in (a config's own ``overrides:`` section). Any problem is a ConfigError prefixed with ``label``."""
    with config_errors(label):
        if isinstance(overrides, dict):
            tree = merge_tree(tree, overrides)
        else:
            apply_overrides(tree, overrides)
        return from_dict(cls, tree)


def read_yaml_mapping(path: str | Path, what: str = "config file") -> dict:
    """The top-level mapping of a YAML file; ConfigError naming the file when missing or malformed."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: {what} not found")
    try:
        tree = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{p}: top level must be a mapping, got {type(tree).__name__}")
    return tree


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Load ``cls`` from a YAML file (or defaults when ``path`` is None) plus overrides.

    Any problem is raised as ConfigError prefixed with the file name.
    """
    if path is None:
        return build_config(cls, {}, overrides)
    return build_config(cls, read_yaml_mapping(path), overrides, str(Path(path)))


def save_config(obj: Any, path: str | Path) -> None:
    from ..atomic import write_text

    write_text(path, yaml.safe_dump(to_dict(obj), sort_keys=False))
