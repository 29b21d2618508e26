"""YAML values against type annotations: the check every config field and every peft config option gets.

Usage:
    fits(3, int | None) -> True;  fits("x", float) -> False;  as_float("1e-3") -> 0.001
"""

from __future__ import annotations

import types
import typing
from typing import Any


def fits(value: Any, annotation: Any) -> bool:
    """Does a YAML value fit a type hint (a config field's, or a peft config's)? Unknown kinds of hint
    accept anything; ints fit floats; bools fit only bool."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is typing.Any:
        return True
    if value is None:
        return annotation is type(None) or type(None) in args
    if origin in (typing.Union, types.UnionType):
        return any(fits(value, a) for a in args if a is not type(None))
    if origin is typing.Literal:
        return any(
            value == a
            or (isinstance(a, str) and "[" in a and isinstance(value, str) and value.startswith(a.split("[")[0]))
            for a in args
        )
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if origin in (list, tuple, set) or annotation in (list, tuple, set):
        return isinstance(value, list) and (not args or all(fits(v, args[0]) for v in value))
    if origin is dict or annotation is dict:
        return isinstance(value, dict)
    return True


def type_name(annotation: Any) -> str:
    return str(annotation).replace("typing.", "").replace("<class '", "").replace("'>", "")


def as_float(value: Any) -> Any:
    """YAML 1.1 reads ``1e-3`` as a string: turn such strings into floats, leave the rest alone."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value
