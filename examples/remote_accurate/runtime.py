"""MLServer runtime: the demo's accurate tier (ONNX MPNet + a scikit-learn head) over KServe V2.

This file runs inside MLServer, on the model server's machine, and needs no tiergate: only
onnxruntime, tokenizers, joblib and numpy (``scripts/peers/install_mlserver.sh`` installs
them beside MLServer at the main venv's versions). It does what tiergate's in-process
``onnx-embedding-classifier`` tier does, so the same files give the same answers:
tokenise (truncate to ``max_length``), run the ONNX transformer one text at a time (int8
models quantise activations per call, so batching would change a text's embedding with its
batch-mates), mean-pool over the attention mask, L2-normalise, ``head.predict_proba``.

Request: one BYTES input of N texts. Response: ``probabilities``, FP64, shape ``[N, K]``,
columns in ``head.classes_`` order (tiergate pins the same order in its ``labels:``).

model-settings.json (written by ``prepare.py``)::

    {"name": "accurate", "implementation": "runtime.OnnxSentimentRuntime",
     "parameters": {"extra": {"model": ".../mpnet.onnx", "tokenizer": ".../tokenizer.json",
                              "head": ".../head.joblib", "max_length": 128, "threads": 1}}}
"""

from __future__ import annotations

from typing import Any

import joblib
import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec, StringCodec
from mlserver.errors import InferenceError
from mlserver.types import InferenceRequest, InferenceResponse
from tokenizers import Tokenizer


class OnnxSentimentRuntime(MLModel):
    async def load(self) -> bool:
        extra: dict[str, Any] = dict(self.settings.parameters.extra or {})
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(extra.get("threads", 1))
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(
            extra["model"], sess_options=opts, providers=["CPUExecutionProvider"]
        )
        self._inputs = [i.name for i in self._session.get_inputs()]
        outputs = [o.name for o in self._session.get_outputs()]
        named = [n for n in outputs if n in ("token_embeddings", "last_hidden_state")]
        self._output = named[0] if named else outputs[0]
        self._tokenizer = Tokenizer.from_file(extra["tokenizer"])
        self._tokenizer.enable_truncation(max_length=int(extra.get("max_length", 128)))
        self._tokenizer.no_padding()
        self._head = joblib.load(extra["head"])
        return True

    def _embed(self, text: str) -> np.ndarray:
        enc = self._tokenizer.encode(text)
        ids = np.asarray([enc.ids], dtype=np.int64)
        mask = np.asarray([enc.attention_mask], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feeds["token_type_ids"] = np.zeros_like(ids)
        (tokens,) = self._session.run([self._output], feeds)
        w = mask.astype(np.float32)[:, :, None]
        pooled = (np.asarray(tokens, dtype=np.float32) * w).sum(axis=1) / np.maximum(
            w.sum(axis=1), 1e-9
        )
        return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        if len(payload.inputs) != 1 or payload.inputs[0].datatype != "BYTES":
            raise InferenceError("expected one BYTES input holding the texts")
        texts = [t if isinstance(t, str) else t.decode() for t in
                 StringCodec.decode_input(payload.inputs[0])]  # fmt: skip
        emb = np.vstack([self._embed(t) for t in texts]) if texts else np.zeros((0, 768))
        probs = np.asarray(self._head.predict_proba(emb), dtype=np.float64)
        return InferenceResponse(
            model_name=self.name,
            outputs=[NumpyCodec.encode_output(name="probabilities", payload=probs)],
        )
