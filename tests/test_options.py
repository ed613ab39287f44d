"""Typed experiment options (dsb_widgets.options): names, types and ranges fail with one line."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest

from dsb_widgets.errors import ConfigError
from dsb_widgets.options import options_dict, options_help, parse_options


@dataclass(frozen=True)
class _Opts:
    width: int = field(default=256, metadata={"help": "hidden width", "min": 1})
    taylor: bool = False
    lr_scale: float = field(default=1.0, metadata={"min": 0.0})
    train_on: str = field(default="real", metadata={"choices": ("real", "gauss_clone")})
    kind: Literal["a", "b"] = "a"
    layers: tuple[int, ...] = (1, 2)
    limit: Optional[int] = None


def test_defaults_and_coercion_from_strings() -> None:
    o = parse_options(_Opts, {"width": "64", "taylor": "true", "lr_scale": "0.5", "layers": "1,2,4", "limit": "3"})
    assert (o.width, o.taylor, o.lr_scale, o.layers, o.limit) == (64, True, 0.5, (1, 2, 4), 3)
    assert parse_options(_Opts, {}) == _Opts()
    assert parse_options(_Opts, {"limit": "none"}).limit is None


def test_json_round_trip() -> None:
    o = parse_options(_Opts, {"layers": [1, 3]})
    assert parse_options(_Opts, options_dict(o)) == o


@pytest.mark.parametrize("raw, needle", [
    ({"widht": 64}, "did you mean 'width'"),
    ({"foo": "bar"}, "unknown option 'foo'"),
    ({"taylor": "maybe"}, "true/false"),
    ({"width": 0}, "must be >= 1"),
    ({"width": "abc"}, "is an integer"),
    ({"width": True}, "is an integer"),
    ({"width": 1.5}, "is an integer"),
    ({"train_on": "gauss"}, "one of: real, gauss_clone"),
    ({"kind": "c"}, "one of: a, b"),
    ({"lr_scale": -1}, "must be >= 0"),
])
def test_bad_options_are_one_line_errors(raw: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_options(_Opts, raw, experiment="images")
    msg = str(err.value)
    assert needle in msg and "\n" not in msg


def test_help_lists_every_option() -> None:
    text = options_help(_Opts)
    for name in ("width=256", "taylor=False", "train_on=real", "[real|gauss_clone]"):
        assert name in text
