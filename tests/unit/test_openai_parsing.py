"""Reading class probabilities from an OpenAI-compatible answer's logprobs (no server)."""

from __future__ import annotations

import math

import pytest

from tiergate.errors import ModelError
from tiergate.models.openai import _top_logprobs, label_probabilities


def test_label_probabilities_sum_case_and_space_variants_and_renormalise() -> None:
    top = {" Positive": math.log(0.3), "positive": math.log(0.1), " negative": math.log(0.2),
           " the": math.log(0.4)}  # fmt: skip
    pos, neg = label_probabilities(top, ["positive", "negative"])
    assert pos == pytest.approx(0.4 / 0.6) and neg == pytest.approx(0.2 / 0.6)


def test_a_label_missing_from_the_top_k_gets_the_floor_not_zero() -> None:
    top = {" positive": math.log(0.7), " the": math.log(0.05)}
    pos, neg = label_probabilities(top, ["positive", "negative"])
    assert neg == pytest.approx(0.05 / 0.75) and neg > 0 and pos + neg == pytest.approx(1.0)


def test_no_finite_alternative_is_an_error_not_a_confident_answer() -> None:
    with pytest.raises(ValueError, match="no label word"):
        label_probabilities({" x": -math.inf}, ["positive", "negative"])
    with pytest.raises(ValueError, match="no alternatives"):
        label_probabilities({}, ["positive", "negative"])


def answer(logprobs: object) -> dict[str, object]:
    return {"choices": [{"text": " positive", "logprobs": logprobs}]}


CONTENT_LAYOUT = {"content": [{"token": " positive", "logprob": -0.1, "top_logprobs": [
    {"token": " positive", "logprob": -0.1}, {"token": " negative", "logprob": -2.5},
    {"token": " positive", "logprob": -3.0}]}]}  # fmt: skip
LEGACY_LAYOUT = {"tokens": [" positive"], "token_logprobs": [-0.1],
                 "top_logprobs": [{" positive": -0.1, " negative": -2.5}]}  # fmt: skip


@pytest.mark.parametrize("layout", [CONTENT_LAYOUT, LEGACY_LAYOUT], ids=["content", "legacy"])
def test_both_logprobs_layouts_are_read(layout: object) -> None:
    # chat and llama-server's /v1/completions use "content"; OpenAI/vLLM completions legacy
    assert _top_logprobs(answer(layout)) == {" positive": -0.1, " negative": -2.5}


@pytest.mark.parametrize("layout", [None, {}, {"content": []}, {"top_logprobs": []},
                                    {"content": None, "top_logprobs": None}, [1, 2]])  # fmt: skip
def test_no_logprobs_is_none_so_the_tier_refuses_to_guess(layout: object) -> None:
    assert _top_logprobs(answer(layout)) is None


def test_an_answer_without_choices_is_a_typed_error() -> None:
    with pytest.raises(ModelError, match="no choices"):
        _top_logprobs({"choices": []})
