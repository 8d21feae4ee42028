"""An LLM as a classifier tier, over an OpenAI-compatible API (`openai-chat`, `openai-completions`).

Each input is one call asking for a single output token at temperature 0 with its top
alternatives (``logprobs``). The class probabilities are read from those alternatives:
for each label, the probability of its answer word (case and leading-space variants
summed), renormalised over the labels. A label the model did not rank in the top ``k``
gets the smallest probability that was returned (a floor: it is at most that likely),
not zero, so one missing label never makes another certain.

The input is untrusted: it goes into the user message (chat) or the ``{input}`` slot of
the prompt (completions) and nowhere else, and since the answer is read from the label
words' probabilities, no input can make the tier answer anything outside its label set.

A server that returns no ``logprobs`` fails the start-up probe with a clear error: a tier
that cannot say how sure it is must not pretend to a confidence of 1.0.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from tiergate.config import OpenAIChatModelConfig, OpenAICompletionsModelConfig
from tiergate.errors import ConfigError, ModelError, UpstreamError
from tiergate.models.base import Scored
from tiergate.models.upstream import Upstream

__all__ = ["OpenAIClassifier", "label_probabilities"]

OpenAIConfig = OpenAIChatModelConfig | OpenAICompletionsModelConfig


def label_probabilities(top: dict[str, float], words: Sequence[str]) -> list[float]:
    """Class probabilities from one token's ``{token: logprob}`` alternatives.

    >>> [round(p, 3) for p in label_probabilities({" yes": -0.1, "no": -2.5}, ["yes", "no"])]
    [0.917, 0.083]
    """
    if not top:
        raise ValueError("no alternatives were returned")
    wanted = {w.lower(): i for i, w in enumerate(words)}
    mass = [0.0] * len(words)
    seen = [False] * len(words)
    for token, logprob in top.items():
        i = wanted.get(token.strip().lower())
        if i is not None and math.isfinite(logprob):
            mass[i] += math.exp(logprob)
            seen[i] = True
    # A label missing from the top-k is at most as likely as the least likely returned.
    floor = min((math.exp(lp) for lp in top.values() if math.isfinite(lp)), default=0.0)
    mass = [m if ok else floor for m, ok in zip(mass, seen, strict=True)]
    total = sum(mass)
    if total <= 0:
        raise ValueError("no label word and no finite alternative among the top tokens")
    return [m / total for m in mass]


# Room for what a server adds to the prompt: a chat template's role markers and a
# tokenizer's BOS/EOS (counted generously: the bound must never be below the real count).
_TEMPLATE_TOKENS = 64
_SPECIAL_TOKENS = 8


class OpenAIClassifier:
    """``openai-chat`` / ``openai-completions`` tier: see the module docstring."""

    metered = True

    def __init__(self, cfg: OpenAIConfig, *, name: str = "llm", upstream: Upstream | None = None):
        self.cfg = cfg
        self.chat = isinstance(cfg, OpenAIChatModelConfig)
        self._labels = tuple(cfg.labels)
        self._words = tuple(cfg.labels.values())
        self.upstream = upstream or Upstream(
            cfg.base_url, cfg.http, name=name, api_key=cfg.api_key()
        )
        ident = cfg.model_dump(mode="json", exclude={"http", "api_key_env", "pricing"})
        self._version = hashlib.sha256(repr(sorted(ident.items())).encode()).hexdigest()[:16]
        self.ready = False
        self.calls = 0

    def __repr__(self) -> str:
        kind = "chat" if self.chat else "completions"
        return f"OpenAIClassifier({kind}, model={self.cfg.model!r}, {self.upstream!r})"

    @property
    def labels(self) -> tuple[str, ...]:
        return self._labels

    @property
    def version(self) -> str:
        """A hash of what decides the answers: server, model, prompt, label words."""
        return self._version

    def _request(self, text: str) -> tuple[str, dict[str, Any]]:
        cfg = self.cfg
        common = {"model": cfg.model, "max_tokens": 1, "temperature": 0}
        if isinstance(cfg, OpenAIChatModelConfig):
            user = cfg.prompt.replace("{input}", text)
            messages = [
                {"role": "system", "content": cfg.system},
                {"role": "user", "content": user},
            ]
            body = {**common, "messages": messages, "logprobs": True,
                    "top_logprobs": cfg.top_logprobs}  # fmt: skip
            return "/v1/chat/completions", body
        prompt = cfg.prompt.replace("{input}", text)
        return "/v1/completions", {**common, "prompt": prompt, "logprobs": cfg.top_logprobs}

    def worst_cost(self, text: str) -> float:
        """An upper bound of one call's cost, before the call (for budget reservations).

        The prompt is counted as one token per UTF-8 byte (no tokenizer makes a token of
        less than a byte) plus room for the chat template's and the tokenizer's special
        tokens, and the completion as ``max_tokens``.
        """
        _, body = self._request(text)
        if self.chat:
            n = sum(len(m["content"].encode()) for m in body["messages"]) + _TEMPLATE_TOKENS
        else:
            n = len(body["prompt"].encode()) + _SPECIAL_TOKENS
        return self.cfg.pricing.cost(n, int(body["max_tokens"]))

    async def _one(self, text: str) -> tuple[list[float], int, int]:
        path, body = self._request(text)
        answer = await self.upstream.post(path, body)
        self.calls += 1
        top = _top_logprobs(answer)
        if top is None:
            raise UpstreamError(
                f"tier {self.upstream.name!r}: the server returned no logprobs, so the "
                "tier cannot say how sure it is; use a server that supports `logprobs`",
                retryable=False, unhealthy=True,
            )  # fmt: skip
        try:
            probs = label_probabilities(top, self._words)
        except ValueError as exc:
            raise ModelError(f"tier {self.upstream.name!r}: {exc}") from None
        usage = answer.get("usage") or {}
        return probs, int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)

    async def apredict_batch(self, texts: Sequence[str]) -> Scored:
        """One upstream call per text, concurrently (bounded by the tier's pool)."""
        rows = await asyncio.gather(*(self._one(t) for t in texts))
        probs = np.array([r[0] for r in rows], dtype=np.float64)
        tokens = np.array([[r[1], r[2]] for r in rows], dtype=np.int64).reshape(len(rows), 2)
        price = self.cfg.pricing
        costs = np.array([price.cost(int(p), int(c)) for p, c in tokens], dtype=np.float64)
        return Scored(probs, costs, tokens)

    async def start(self) -> None:
        """Probe: one real call must return logprobs; label words must be one token each."""
        await self._check_label_tokens()
        try:
            await self._one("ok")
        except UpstreamError as exc:
            raise ConfigError(f"start-up probe failed: {exc.message}") from None
        self.ready = True

    async def _check_label_tokens(self) -> None:
        # llama.cpp's server exposes its tokenizer; hosted APIs do not (the config-time
        # checks are all they get).
        firsts: dict[int, str] = {}
        for label, word in zip(self._labels, self._words, strict=True):
            try:
                got = await self.upstream.post("/extras/tokenize", {"input": " " + word})
                base = await self.upstream.post("/extras/tokenize", {"input": ""})
            except UpstreamError:
                return
            tokens = got.get("tokens")
            prefix = base.get("tokens")
            if not isinstance(tokens, list) or not isinstance(prefix, list):
                return
            own = tokens[len(prefix) :] if tokens[: len(prefix)] == prefix else tokens
            if len(own) != 1:
                raise ConfigError(
                    f"label {label!r}: the answer word {word!r} is {len(own)} tokens for this "
                    "model; choose a word that is a single token"
                )
            if own[0] in firsts:
                raise ConfigError(
                    f"labels {firsts[own[0]]!r} and {label!r} are answered with the same token "
                    "for this model; choose words that differ in their first token"
                )
            firsts[own[0]] = label

    async def aclose(self) -> None:
        await self.upstream.aclose()

    def status(self) -> dict[str, object]:
        return {"kind": self.cfg.kind, "model": self.cfg.model, "ready": self.ready,
                **self.upstream.status()}  # fmt: skip


def _top_logprobs(answer: dict[str, Any]) -> dict[str, float] | None:
    """The first output token's alternatives as ``{token: logprob}``, or ``None``.

    Two layouts exist: the chat one, ``{"content": [{"token", "logprob", "top_logprobs":
    [{"token", "logprob"}]}]}``, which llama.cpp's C++ ``llama-server`` also returns from
    ``/v1/completions``; and the legacy completions one, ``{"top_logprobs": [{token:
    logprob}]}`` (OpenAI, vLLM, llama-cpp-python). Either is read from either endpoint.
    """
    try:
        lp = answer["choices"][0].get("logprobs")
    except (KeyError, IndexError, TypeError, AttributeError):
        raise ModelError("the server's answer has no choices") from None
    if not lp or not isinstance(lp, dict):
        return None
    content = lp.get("content")
    if content and isinstance(content, list) and isinstance(content[0], dict):
        out: dict[str, float] = {}
        for t in content[0].get("top_logprobs") or []:
            token, logprob = t.get("token"), t.get("logprob")
            if isinstance(token, str) and isinstance(logprob, int | float):
                out[token] = max(out.get(token, -math.inf), float(logprob))
        return out or None
    tops = lp.get("top_logprobs")
    if not tops or not isinstance(tops, list) or not isinstance(tops[0], dict):
        return None
    return {str(k): float(v) for k, v in tops[0].items() if isinstance(v, int | float)} or None
