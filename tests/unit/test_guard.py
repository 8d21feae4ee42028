"""Input guard: normalisation and typed rejections."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tiergate.config import LimitsConfig
from tiergate.errors import InputError, InputTooLargeError
from tiergate.guard import Guard

guard = Guard(LimitsConfig(max_input_chars=50, max_input_bytes=60, max_batch_items=3))


def test_normalises_unicode_whitespace_and_controls() -> None:
    assert guard.text("  Cafe\u0301\x00\u200b  is\n\tgood ") == "Café is good"


@pytest.mark.parametrize(
    ("value", "error", "needle"),
    [
        (None, InputError, "got null"),
        (3, InputError, "got a number"),
        (True, InputError, "got a boolean"),
        ({"a": 1}, InputError, "got an object"),
        ("   \x07  ", InputError, "empty"),
        ("x" * 51, InputTooLargeError, "51 characters"),
        ("é" * 31, InputTooLargeError, "62 UTF-8 bytes"),
        ("\ud800", InputError, "lone surrogate"),
    ],
)
def test_rejections_are_typed_and_named(value: object, error: type, needle: str) -> None:
    with pytest.raises(error) as info:
        guard.text(value)
    assert needle in info.value.message  # type: ignore[attr-defined]


def test_batch_limits() -> None:
    assert guard.batch(["a", " b "]) == ["a", "b"]
    with pytest.raises(InputTooLargeError):
        guard.batch(["a"] * 4)
    with pytest.raises(InputError, match=r"inputs\[1\]"):
        guard.batch(["a", 2])


@given(st.text(max_size=80))
def test_any_string_is_either_rejected_cleanly_or_normalised(value: str) -> None:
    try:
        out = guard.text(value)
    except InputError:
        return
    assert out and out == out.strip() and "  " not in out
    assert len(out) <= 50
    assert guard.text(out) == out  # idempotent
