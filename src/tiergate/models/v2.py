"""A model behind the Open Inference Protocol (KServe V2 REST) as a tier: `v2-infer`.

This is what Triton, KServe, MLServer and Seldon speak, so a heavy tier on a GPU cluster
is one config block. A micro-batch is one ``POST /v2/models/{name}/infer`` with a BYTES
input of N texts; the answer's output named in the config holds N rows of class
probabilities. The protocol does not return class names, so the labels are pinned in the
config, in the output's column order. Readiness comes from ``/v2/health/ready`` and
``/v2/models/{name}/ready``, checked at start-up and shown in ``/readyz``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from tiergate.config import V2InferModelConfig
from tiergate.errors import ConfigError, ModelError, UpstreamError
from tiergate.models.base import Scored
from tiergate.models.upstream import Upstream

__all__ = ["V2InferClassifier"]


class V2InferClassifier:
    """``v2-infer`` tier: see the module docstring."""

    metered = False

    def __init__(
        self, cfg: V2InferModelConfig, *, name: str = "v2", upstream: Upstream | None = None
    ) -> None:
        self.cfg = cfg
        self.upstream = upstream or Upstream(
            cfg.base_url, cfg.http, name=name, api_key=cfg.api_key()
        )
        route = f"/v2/models/{cfg.model}"
        if cfg.model_version:
            route += f"/versions/{cfg.model_version}"
        self._route = route
        ident = cfg.model_dump(mode="json", exclude={"http", "api_key_env"})
        self._version = hashlib.sha256(repr(sorted(ident.items())).encode()).hexdigest()[:16]
        self.ready = False
        self.calls = 0

    def __repr__(self) -> str:
        return f"V2InferClassifier({self.cfg.model!r}, {self.upstream!r})"

    @property
    def labels(self) -> tuple[str, ...]:
        return self.cfg.labels

    @property
    def version(self) -> str:
        """A hash of server, model name and version, tensor names and labels."""
        return self._version

    async def apredict_batch(self, texts: Sequence[str]) -> Scored:
        """One infer call for the whole batch."""
        body = {
            "inputs": [
                {
                    "name": self.cfg.input_name,
                    "shape": [len(texts)],
                    "datatype": "BYTES",
                    "data": list(texts),
                }
            ],
            "outputs": [{"name": self.cfg.output_name}],
        }
        answer = await self.upstream.post(self._route + "/infer", body)
        self.calls += 1
        return Scored(self._probabilities(answer, len(texts)))

    def _probabilities(self, answer: dict[str, Any], n: int) -> np.ndarray[Any, Any]:
        k = len(self.cfg.labels)
        outputs = answer.get("outputs")
        if not isinstance(outputs, list):
            raise ModelError(f"tier {self.upstream.name!r}: the answer has no `outputs` list")
        out = next((o for o in outputs if isinstance(o, dict)
                    and o.get("name") == self.cfg.output_name), None)  # fmt: skip
        if out is None:
            names = [o.get("name") for o in outputs if isinstance(o, dict)]
            raise ModelError(
                f"tier {self.upstream.name!r}: no output named {self.cfg.output_name!r} "
                f"in the answer (outputs: {names})"
            )
        data = out.get("data")
        if not isinstance(data, list):
            raise ModelError(f"tier {self.upstream.name!r}: output has no `data` list")
        if data and isinstance(data[0], list):  # some servers nest rows
            data = [v for row in data for v in row]
        try:
            arr = np.asarray(data, dtype=np.float64)
        except (TypeError, ValueError):
            raise ModelError(f"tier {self.upstream.name!r}: output data is not numeric") from None
        if arr.size != n * k:
            raise ModelError(
                f"tier {self.upstream.name!r}: output has {arr.size} values for {n} inputs "
                f"and {k} labels (shape {out.get('shape')})"
            )
        return arr.reshape(n, k)

    async def start(self) -> None:
        """Probe server and model readiness, then one real call."""
        if await self.upstream.get_status("/v2/health/ready") != 200:
            raise ConfigError(
                f"V2 server at {self.upstream.base_url} is not ready (/v2/health/ready): "
                f"{self.upstream.last_error or 'not 200'}"
            )
        if await self.upstream.get_status(self._route + "/ready") != 200:
            raise ConfigError(
                f"model {self.cfg.model!r} is not ready on {self.upstream.base_url} "
                f"({self._route}/ready)"
            )
        try:
            await self.apredict_batch(["ok"])
        except (UpstreamError, ModelError) as exc:
            raise ConfigError(f"start-up probe failed: {exc.message}") from None
        self.ready = True

    async def aclose(self) -> None:
        await self.upstream.aclose()

    def status(self) -> dict[str, object]:
        return {"kind": "v2-infer", "model": self.cfg.model, "ready": self.ready,
                **self.upstream.status()}  # fmt: skip
