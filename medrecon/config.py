"""Typed run configurations: frozen dataclasses loaded from YAML and validated.

Configs are data, never code. A command defines its options as a frozen dataclass whose fields
carry type hints (``int``, ``float``, ``bool``, ``str``, ``Path``, a ``StrEnum``, ``Literal``,
``tuple[int, ...]``, ``tuple[float, float]``, ``list[T]``, ``dict[str, T]``, ``T | None`` and
nested config dataclasses) and, where it matters, bounds declared with :func:`option`::

    class Sampler(StrEnum):
        EDM = "edm"
        DDIM = "ddim"

    @dataclass(frozen=True)
    class SampleConfig:
        sampler: Sampler = Sampler.EDM
        steps: int = option(50, ge=1, help="Number of reverse-diffusion steps.")
        sigma_range: tuple[float, float] = (0.002, 80.0)

    cfg = load_config("run.yaml", SampleConfig, overrides=["steps=20"])
    dump_config(cfg, out_dir / "config.yaml")  # the resolved config, next to the outputs

Validation is strict and every problem is a :class:`~medrecon.errors.ConfigError` whose one
sentence names the file and the dotted key: unknown keys (with a "did you mean" hint), missing
required keys, wrong types (``True`` is not an int; a str is not a number, except that float
fields accept strings such as ``"1e-3"`` that YAML 1.1 leaves as text), out-of-range values,
unknown enum values (listing the allowed ones), and ``ValueError`` or ``ConfigError`` raised
by a dataclass's own ``__post_init__`` checks.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import math
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from medrecon.errors import ConfigError
from medrecon.io.atomic import atomic_file
from medrecon.jsonutil import parse_bounded

__all__ = ["dump_config", "from_dict", "load_config", "option", "to_dict"]

T = TypeVar("T")

_BOUNDS = ("ge", "gt", "le", "lt")


def option(
    default: Any = dataclasses.MISSING,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    help: str = "",
    default_factory: Any = dataclasses.MISSING,
) -> Any:
    """A dataclass field with inclusive (``ge``, ``le``) or exclusive (``gt``, ``lt``) bounds.

    Bounds apply to numbers, and to every element of tuples/lists of numbers. ``help`` is kept in
    the field metadata for documentation.
    """
    metadata = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    if help:
        metadata["help"] = help
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


# --------------------------------------------------------------------------------------------
# Conversion from plain data
# --------------------------------------------------------------------------------------------


class _Ctx:
    """Where a value came from, for error sentences."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, message: str) -> ConfigError:
        where = f"{self.source}: " if self.source else ""
        at = f"key '{key}' " if key else ""
        return ConfigError(f"{where}{at}{message}")


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        if issubclass(tp, enum.Enum):
            return "one of " + ", ".join(repr(m.value) for m in tp)
        return {"int": "an integer", "float": "a number", "bool": "true or false",
                "str": "a string", "Path": "a path"}.get(tp.__name__, tp.__name__)
    return str(tp).replace("typing.", "")


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, str):
        return repr(value)
    return f"{value!r}"


def _check_bounds(value: Any, meta: Mapping[str, Any], key: str, ctx: _Ctx) -> None:
    if not any(b in meta for b in _BOUNDS):
        return
    values = value if isinstance(value, tuple | list) else (value,)
    for v in values:
        if not isinstance(v, int | float) or isinstance(v, bool):
            continue
        # Written as negations so that NaN fails every bound.
        if "ge" in meta and not v >= meta["ge"]:
            raise ctx.fail(key, f"must be >= {meta['ge']}, got {v}.")
        if "gt" in meta and not v > meta["gt"]:
            raise ctx.fail(key, f"must be > {meta['gt']}, got {v}.")
        if "le" in meta and not v <= meta["le"]:
            raise ctx.fail(key, f"must be <= {meta['le']}, got {v}.")
        if "lt" in meta and not v < meta["lt"]:
            raise ctx.fail(key, f"must be < {meta['lt']}, got {v}.")


def _convert(value: Any, tp: Any, key: str, ctx: _Ctx) -> Any:
    """Convert plain YAML data ``value`` to type ``tp``, or raise a ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)

    if tp is Any:
        return value
    if origin is typing.Annotated:
        return _convert(value, args[0], key, ctx)
    if origin in (typing.Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        if value is None:
            if len(non_none) < len(args):
                return None
            raise ctx.fail(key, f"must not be null; expected {_type_name(tp)}.")
        errors = []
        for a in non_none:
            try:
                return _convert(value, a, key, ctx)
            except ConfigError as exc:
                errors.append(exc)
        if len(non_none) == 1:
            raise errors[0]
        raise ctx.fail(key, f"expected {' or '.join(_type_name(a) for a in non_none)}, "
                            f"got {_describe(value)}.")
    if origin is typing.Literal:
        if value in args and not (isinstance(value, bool) and not any(a is value for a in args)):
            return value
        allowed = ", ".join(repr(a) for a in args)
        raise ctx.fail(key, f"must be one of {allowed}, got {_describe(value)}.")
    if value is None:
        raise ctx.fail(key, f"must not be null; expected {_type_name(tp)}.")
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, Mapping):
            raise ctx.fail(key, f"must be a mapping of {tp.__name__} options, "
                                f"got {_describe(value)}.")
        return _from_mapping(tp, value, key, ctx)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ctx.fail(key, f"must be a list, got {_describe(value)}.")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{key}[{i}]", ctx) for i, v in enumerate(value))
        if args and len(value) != len(args):
            raise ctx.fail(key, f"must be a list of {len(args)} items, got {len(value)}.")
        if not args:
            return tuple(value)
        return tuple(_convert(v, a, f"{key}[{i}]", ctx) for i, (v, a) in
                     enumerate(zip(value, args, strict=True)))
    if origin in (list, Sequence) or tp is list:
        if not isinstance(value, list | tuple):
            raise ctx.fail(key, f"must be a list, got {_describe(value)}.")
        item = args[0] if args else Any
        return [_convert(v, item, f"{key}[{i}]", ctx) for i, v in enumerate(value)]
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise ctx.fail(key, f"must be a mapping, got {_describe(value)}.")
        kt, vt = args if args else (Any, Any)
        return {_convert(k, kt, f"{key}.{k}", ctx): _convert(v, vt, f"{key}.{k}", ctx)
                for k, v in value.items()}
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        if isinstance(value, tp):
            return value
        for m in tp:
            if value == m.value or (isinstance(value, str) and m.name == value):
                return m
        if isinstance(value, str):
            folded = [m for m in tp if isinstance(m.value, str)
                      and m.value.casefold() == value.casefold()]
            if len(folded) == 1:
                return folded[0]
        allowed = ", ".join(repr(m.value) for m in tp)
        raise ctx.fail(key, f"must be one of {allowed}, got {_describe(value)}.")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ctx.fail(key, f"must be true or false, got {_describe(value)}.")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ctx.fail(key, f"must be an integer, got {_describe(value)}.")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            # YAML 1.1 reads 1e-3 (no dot) as a string; accept any string float() parses.
            try:
                return float(value)
            except ValueError:
                pass
        raise ctx.fail(key, f"must be a number, got {_describe(value)}.")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ctx.fail(key, f"must be a string, got {_describe(value)} (quote it in YAML).")
    if tp is Path or (isinstance(tp, type) and issubclass(tp, Path)):
        if isinstance(value, str | Path):
            return Path(value)
        raise ctx.fail(key, f"must be a path, got {_describe(value)}.")
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ctx.fail(key, f"has unsupported type {_type_name(tp)} in the config class.")


def _from_mapping(cls: type[T], data: Mapping[str, Any], prefix: str, ctx: _Ctx) -> T:
    try:
        hints = typing.get_type_hints(cls, include_extras=True)
    except Exception as exc:  # unresolved forward references: a programming error
        raise TypeError(f"cannot resolve the type hints of {cls.__name__}: {exc}") from exc
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    for k in data:
        if not isinstance(k, str) or k not in fields:
            full = f"{prefix}.{k}" if prefix else str(k)
            close = difflib.get_close_matches(str(k), list(fields), n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            allowed = ", ".join(fields) or "none"
            raise ctx.fail("", f"has an unknown key '{full}' (allowed here: {allowed}).{hint}")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        full = f"{prefix}.{name}" if prefix else name
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ctx.fail(full, f"is required ({_type_name(hints[name])}) but missing.")
            continue
        value = _convert(data[name], hints[name], full, ctx)
        _check_bounds(value, f.metadata, full, ctx)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except (ValueError, TypeError, ConfigError) as exc:
        # A class's own cross-field checks (``__post_init__``) may raise ValueError or
        # ConfigError; either way the sentence gains the file name.
        text = str(exc).strip()
        if not text.endswith("."):
            text += "."
        where = f"in '{prefix}': " if prefix else ""
        raise ctx.fail("", f"{where}{text}") from None


def from_dict(cls: type[T], data: Mapping[str, Any] | None, source: str = "") -> T:
    """Build config dataclass ``cls`` from plain data (as YAML gives), validating everything.

    Args:
        cls: a dataclass type (normally frozen); nested dataclass fields take nested mappings.
        data: a mapping of field names to values; None or {} gives all defaults.
        source: where the data came from (a file name), used in error sentences.

    Raises:
        ConfigError: unknown or missing key, wrong type, out-of-range or invalid value.
    """
    if not (dataclasses.is_dataclass(cls) and isinstance(cls, type)):
        raise TypeError(f"{cls!r} is not a dataclass type")
    ctx = _Ctx(source)
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ctx.fail("", f"must hold a mapping of options at the top level, "
                           f"got {_describe(data)}.")
    return _from_mapping(cls, data, "", ctx)


# --------------------------------------------------------------------------------------------
# Conversion to plain data
# --------------------------------------------------------------------------------------------


def to_dict(obj: Any) -> Any:
    """Plain YAML/JSON-ready data of a config: enums -> values, tuples -> lists, Path -> str."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, enum.Enum):
        return to_dict(obj.value)
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, Mapping):
        return {to_dict(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_dict(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return obj  # YAML writes .inf / .nan and reads them back
    return obj


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def _parse_overrides(overrides: Mapping[str, Any] | Sequence[str]) -> list[tuple[str, Any]]:
    import yaml

    items: list[tuple[str, Any]] = []
    if isinstance(overrides, Mapping):
        return list(overrides.items())
    for text in overrides:
        key, sep, raw = str(text).partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"Override {text!r} must look like key=value, e.g. steps=20.")
        try:
            value = (parse_bounded(yaml.safe_load, raw, f"The value of {key}", ConfigError)
                     if raw.strip() else "")
        except yaml.YAMLError:
            value = raw
        items.append((key, value))
    return items


def _apply_override(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for i, p in enumerate(parts[:-1]):
        child = node.get(p)
        if child is None:
            child = {}
            node[p] = child
        elif not isinstance(child, dict):
            raise ConfigError(f"Override '{key}': '{'.'.join(parts[:i + 1])}' is not a section.")
        node = child
    node[parts[-1]] = value


def load_config(
    path: str | Path | None,
    cls: type[T],
    overrides: Mapping[str, Any] | Sequence[str] = (),
) -> T:
    """Read a YAML config file into ``cls``, apply ``overrides``, and validate.

    Args:
        path: a YAML file holding a mapping (or None for the class defaults).
        cls: the config dataclass.
        overrides: dotted ``key=value`` strings (values parsed as YAML, e.g. from a CLI
            ``--set``), or a mapping of dotted keys to values; applied after the file.

    Raises:
        ConfigError: missing or unreadable file, YAML syntax error, or any validation error;
            the sentence names the file (and the key).
    """
    import yaml

    source = "<defaults>"
    data: Any = {}
    if path is not None:
        p = Path(path)
        source = str(p)
        if not p.is_file():
            raise ConfigError(f"Config file {p} does not exist.")
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"Cannot read config file {p}: {exc}.") from None
        try:
            data = parse_bounded(yaml.safe_load, text, str(p), ConfigError)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(exc, "problem", None) or "invalid YAML"
            raise ConfigError(f"{p}: YAML syntax error{where}: {problem}.") from None
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(
                f"{p}: must hold a mapping of options at the top level, got {_describe(data)}."
            )
    items = _parse_overrides(overrides)
    if items:
        data = dict(data)
        for key, value in items:
            _apply_override(data, key, value)
        source = f"{source} (with overrides)"
    return from_dict(cls, data, source=source)


def dump_config(obj: Any, path: str | Path) -> Path:
    """Write config dataclass ``obj`` as YAML (atomically), in field order, readable by
    :func:`load_config`.
    """
    import yaml

    if not (dataclasses.is_dataclass(obj) and not isinstance(obj, type)):
        raise TypeError(f"dump_config needs a dataclass instance, got {type(obj).__name__}")
    text = yaml.safe_dump(to_dict(obj), sort_keys=False, default_flow_style=None,
                          allow_unicode=True)
    path = Path(path)
    with atomic_file(path) as tmp:
        tmp.write_text(f"# {type(obj).__name__}, written by medrecon\n{text}", encoding="utf-8")
    return path
