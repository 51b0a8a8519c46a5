"""Typed dataclass configs: loading from dicts/YAML/JSON, dotted overrides, validation.

Every config section is a plain ``@dataclass`` whose fields carry a one-line docstring (a string
literal right under the field, as torchtitan does). ``from_dict`` checks every key and type and
raises :class:`ConfigError` naming the dotted key and the source file, so a typo fails before any
work starts.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from remix_ds.errors import RemixError


class ConfigError(RemixError):
    """A config key, type or value is wrong; the message names the key and the file."""


def _where(source: str | None) -> str:
    return f" (in {source})" if source else ""


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str, source: str | None) -> Any:
    """Check ``value`` against the annotation ``tp``; convert the few lossless cases (int -> float)."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, source)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(
            f"{key}: expected {' or '.join(_type_name(a) for a in args)}, got {value!r}{_where(source)}"
        )
    if origin is Literal:
        if isinstance(value, bool) and value not in get_args(tp):
            # YAML 1.1 reads on/off/yes/no as booleans; map them back to the spelling the field takes.
            spellings = ("on", "yes", "true") if value else ("off", "no", "false")
            value = next((a for a in get_args(tp) if isinstance(a, str) and a.lower() in spellings), value)
        if value not in get_args(tp):
            raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}{_where(source)}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping for section {tp.__name__}, got {value!r}{_where(source)}")
        return from_dict(tp, value, prefix=key, source=source)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}{_where(source)}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{key}: expected {len(args)} items, got {len(value)}{_where(source)}")
            return tuple(_coerce(v, a, f"{key}[{i}]", source) for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        out = [_coerce(v, item, f"{key}[{i}]", source) for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}{_where(source)}")
        kt, vt = get_args(tp) or (Any, Any)
        return {_coerce(k, kt, key, source): _coerce(v, vt, f"{key}.{k}", source) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}{_where(source)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}{_where(source)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            # YAML 1.1 reads "1e-5" as a string; accept numeric strings.
            if isinstance(value, str):
                try:
                    number = float(value)
                except ValueError:
                    pass
                else:
                    if math.isfinite(number):
                        return number
                    raise ConfigError(f"{key}: expected a finite number, got {value!r}{_where(source)}")
            raise ConfigError(f"{key}: expected a number, got {value!r}{_where(source)}")
        if not math.isfinite(value):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}{_where(source)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}{_where(source)}")
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}{_where(source)}")
    return value


def from_dict(cls: type, data: dict, prefix: str = "", source: str | None = None):
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types raise ConfigError."""
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        full = [f"{prefix}.{k}" if prefix else k for k in unknown]
        raise ConfigError(
            f"unknown config key{'s' if len(full) > 1 else ''} {', '.join(full)}{_where(source)}; "
            f"known keys{' of ' + prefix if prefix else ''}: {', '.join(sorted(names))}"
        )
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _coerce(value, hints[name], key, source)
    try:
        return cls(**kwargs)
    except ConfigError as e:
        if source and source not in str(e):
            raise ConfigError(f"{e}{_where(source)}") from None
        raise


def diff(old: dict, new: dict, prefix: str = "") -> dict[str, tuple]:
    """{dotted key: (old, new)} for every leaf that differs between two nested dicts (missing: None)."""
    out = {}
    for k in sorted(set(old) | set(new), key=str):
        key = f"{prefix}.{k}" if prefix else str(k)
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out.update(diff(a, b, key))
        elif a != b:
            out[key] = (a, b)
    return out


def to_dict(cfg) -> dict:
    """Plain-JSON form of a config (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a", "b", "c"], typed value). The value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key.path=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Merge dotted ``key=value`` overrides into a nested dict (CLI > file)."""
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {part} is not a section")
            node = child
        node[path[-1]] = value
    return data


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (plain YAML keeps the last)."""

    source = None

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise ConfigError(
                    f"duplicate key {key!r} at {self.source}:{key_node.start_mark.line + 1} "
                    f"(first at line {seen[key]}); remove one of them"
                )
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def _json_pairs(source: Path):
    def hook(pairs):
        keys = [k for k, _ in pairs]
        dup = next((k for i, k in enumerate(keys) if k in keys[:i]), None)
        if dup is not None:
            raise ConfigError(f"duplicate key {dup!r} in {source}; remove one of them")
        return dict(pairs)
    return hook


def _load_yaml(text: str, path: Path):
    loader = _UniqueKeyLoader(text)
    loader.source = str(path)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def read_config_file(path: str | Path) -> dict:
    """Read a YAML or JSON mapping; errors name the file. Duplicate keys are refused."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    text = path.read_text()
    try:
        data = json.loads(text, object_pairs_hook=_json_pairs(path)) if path.suffix == ".json" else _load_yaml(text, path)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot parse config {path}: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a mapping at the top level")
    return data


def load(cls: type, path: str | Path | None = None, overrides: typing.Sequence[str] = ()):
    """Defaults < file < CLI overrides. Errors name the key and where it came from."""
    data = read_config_file(path) if path else {}
    source = str(path) if path else None
    if overrides:
        try:
            return from_dict(cls, apply_overrides(data, list(overrides)), source=source)
        except ConfigError as e:
            # Say whether the bad key came from the command line.
            keys = {o.split("=", 1)[0] for o in overrides}
            if any(k in str(e) for k in keys):
                msg = str(e).replace(_where(source), "")  # the key came from the command line, not the file
                raise ConfigError(f"{msg} [from command-line override]") from None
            raise
    return from_dict(cls, data, source=source)


def field_docs(cls: type) -> dict[str, str]:
    """The one-line docstrings written under each field (read from the source), inherited ones too."""
    import ast
    import inspect

    docs: dict[str, str] = {}
    for klass in reversed([k for k in cls.__mro__ if dataclasses.is_dataclass(k)]):
        try:
            tree = ast.parse(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body
        for node, nxt in zip(body, body[1:]):
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                if isinstance(nxt, ast.Expr) and isinstance(getattr(nxt, "value", None), ast.Constant):
                    docs[node.target.id] = str(nxt.value.value).strip()
    return docs
