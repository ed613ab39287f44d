"""Typed experiment options: one frozen dataclass per experiment, validated before any data loads.

Each experiment declares its ``-o KEY=VALUE`` options as a frozen dataclass whose fields carry
their type, default and (in ``metadata``) a one-line ``help`` plus optional ``min`` / ``max`` /
``choices``. :func:`parse_options` turns the raw mapping from the CLI, the dashboard form or a
sweep file into that dataclass:

- a misspelt name is an error naming the closest real one (``-o widht=64`` -> "did you mean
  'width'?");
- values are coerced by the declared type (``"64"`` -> 64, ``"true"`` -> True) and anything else
  (``-o taylor=maybe``, ``-o width=abc``) is a one-line :class:`~dsb_widgets.errors.ConfigError`;
- ranges and choices are checked (``-o width=0`` -> "width must be >= 1").

The CLI help (:func:`options_help`), the dashboard form and sweeps read the same schema.

Example::

    @dataclass(frozen=True)
    class ImageOptions:
        width: int = field(default=256, metadata={"help": "hidden width", "min": 1})
        train_on: str = field(default="real", metadata={"choices": ("real", "gauss_clone")})
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from typing import Any, Mapping, TypeVar

from dsb_widgets.errors import ConfigError

T = TypeVar("T")

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _field_types(schema: type) -> dict[str, Any]:
    return typing.get_type_hints(schema)


def _coerce(name: str, value: Any, tp: Any) -> Any:
    """Convert ``value`` to the declared type ``tp`` or raise a one-line ConfigError."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(name, value, arg)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"bad value {value!r} for option {name!r}")
    if origin is typing.Literal:
        for arg in args:
            if value == arg or str(value) == str(arg):
                return arg
        raise ConfigError(f"bad value {value!r} for option {name!r}; pass -o {name}= one of: "
                          f"{', '.join(map(str, args))}")
    if origin in (tuple, list):
        items = value.split(",") if isinstance(value, str) else list(value)
        inner = args[0] if args else str
        return tuple(_coerce(name, v.strip() if isinstance(v, str) else v, inner) for v in items)
    if tp is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise ConfigError(f"option {name!r} is true/false, got {value!r}; pass -o {name}=true or -o {name}=false")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"option {name!r} is an integer, got {value!r}; pass e.g. -o {name}=64")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        try:
            return int(str(value).strip())
        except ValueError:
            raise ConfigError(f"option {name!r} is an integer, got {value!r}; pass e.g. -o {name}=64") from None
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"option {name!r} is a number, got {value!r}; pass e.g. -o {name}=0.1")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"option {name!r} is a number, got {value!r}; pass e.g. -o {name}=0.1") from None
    if tp is str:
        if isinstance(value, (dict, list, tuple)):
            raise ConfigError(f"option {name!r} is a string, got {value!r}")
        return str(value)
    return value


def _check_range(name: str, value: Any, meta: Mapping[str, Any]) -> None:
    if value is None:
        return
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(f"bad value {value!r} for option {name!r}; pass -o {name}= one of: "
                          f"{', '.join(map(str, choices))}")
    lo, hi = meta.get("min"), meta.get("max")
    values = value if isinstance(value, tuple) else (value,)
    for v in values:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            if lo is not None and v < lo:
                hint = meta.get("default_hint", lo)
                raise ConfigError(f"option {name!r} must be >= {lo} (got {v}); pass e.g. -o {name}={hint}")
            if hi is not None and v > hi:
                raise ConfigError(f"option {name!r} must be <= {hi} (got {v})")


def suggest(name: str, candidates: list[str]) -> str:
    """' (did you mean 'x'?)' for the closest candidate, or ''."""
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else ""


def parse_options(schema: type[T], raw: Mapping[str, Any], *, experiment: str = "") -> T:
    """Validate ``raw`` (name -> value, values possibly strings) against ``schema``.

    Returns the frozen dataclass instance. Raises :class:`ConfigError` (one line) for an unknown
    name (naming the closest), a value of the wrong type, or one out of range / not a choice.
    """
    fields = {f.name: f for f in dataclasses.fields(schema)}  # type: ignore[arg-type]
    types = _field_types(schema)
    where = f" for experiment {experiment!r}" if experiment else ""
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in fields:
            raise ConfigError(f"unknown option {key!r}{where}{suggest(key, sorted(fields))} "
                              f"(options: {', '.join(sorted(fields))})")
        try:
            coerced = _coerce(key, value, types[key])
            _check_range(key, coerced, fields[key].metadata)
        except ConfigError as err:  # name the CLI flag where the option has one (e.g. --tokenizer)
            flag = fields[key].metadata.get("flag")
            if not flag:
                raise
            text = str(err).replace(f"-o {key}= ", f"{flag} ").replace(f"-o {key}=", f"{flag} ")
            raise ConfigError(f"{text} ({flag})" if flag not in text else text) from None
        values[key] = coerced
    try:
        obj = schema(**values)
    except (TypeError, ValueError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"bad options{where}: {err}") from None
    return obj


def options_dict(obj: Any) -> dict[str, Any]:
    """The dataclass as a JSON-friendly dict (tuples become lists)."""
    out = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        out[f.name] = list(v) if isinstance(v, tuple) else v
    return out


def options_help(schema: type) -> str:
    """One line per option: ``name=DEFAULT  help [choices]``, for CLI help and the dashboard."""
    lines = []
    for f in dataclasses.fields(schema):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else "")
        meta = f.metadata
        extra = f" [{'|'.join(map(str, meta['choices']))}]" if "choices" in meta else ""
        lines.append(f"{f.name}={default}  {meta.get('help', '')}{extra}".rstrip())
    return "\n".join(lines)
