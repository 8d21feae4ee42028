"""Input validation and normalisation, before any model sees a request."""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from tiergate.config import LimitsConfig
from tiergate.errors import InputError, InputTooLargeError

__all__ = ["Guard"]

# C0/C1 control characters except tab/newline/CR (which become spaces), plus
# zero-width and bidi-override characters that only serve to hide content.
_CONTROL = re.compile(
    r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]"
)
_SPACE = re.compile(r"\s+")


class Guard:
    """Validates one input or a batch; returns normalised text or raises a 4xx error.

    >>> Guard(LimitsConfig()).text("  Caf\u0065\u0301\\x00 ok ")
    'Café ok'
    """

    def __init__(self, limits: LimitsConfig) -> None:
        self.limits = limits

    def text(self, value: Any, where: str = "input") -> str:
        if not isinstance(value, str):
            raise InputError(f"{where} must be a string, got {_json_type(value)}", field=where)
        if len(value) > self.limits.max_input_chars:
            raise InputTooLargeError(
                f"{where} has {len(value)} characters; the limit is {self.limits.max_input_chars}",
                field=where,
            )
        try:
            nbytes = len(value.encode("utf-8"))
        except UnicodeEncodeError as exc:  # lone surrogates from \\ud800-style escapes
            raise InputError(f"{where} is not valid Unicode (lone surrogate)", field=where) from exc
        if nbytes > self.limits.max_input_bytes:
            raise InputTooLargeError(
                f"{where} has {nbytes} UTF-8 bytes; the limit is {self.limits.max_input_bytes}",
                field=where,
            )
        text = unicodedata.normalize("NFC", value)
        text = _CONTROL.sub("", text)
        text = _SPACE.sub(" ", text).strip()
        if not text:
            raise InputError(
                f"{where} is empty (after removing whitespace and control characters)", field=where
            )
        return text

    def batch(self, values: Any) -> list[str]:
        if not isinstance(values, list):
            raise InputError(
                f"inputs must be a list of strings, got {_json_type(values)}", field="inputs"
            )
        if not values:
            raise InputError("inputs is an empty list", field="inputs")
        if len(values) > self.limits.max_batch_items:
            raise InputTooLargeError(
                f"inputs has {len(values)} items; the limit is {self.limits.max_batch_items}",
                field="inputs",
            )
        return [self.text(v, f"inputs[{i}]") for i, v in enumerate(values)]


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
