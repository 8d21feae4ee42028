"""Build time only: SmoothQuant-style activation smoothing before dynamic int8 quantisation.

Dynamic int8 quantisation gives each activation tensor one scale. In a transformer's
feed-forward down-projection (the MatMul after GELU, ``4·d → d``) a few input channels
carry values far larger than the rest, so that one scale leaves the ordinary channels
with a handful of levels. For all-mpnet-base-v2 this is where int8 loses accuracy
(cosine to fp32 0.90; keeping those MatMuls in fp32 restores 0.985 but costs ~20 %
latency).

Smoothing (Xiao et al., *SmoothQuant*, 2023) moves that range into the weights, which
are quantised per output channel and have range to spare: for input channel ``j`` with
activation max ``a_j`` and weight-row max ``w_j``, ``s_j = a_j^α / w_j^(1-α)``; the
activation is divided by ``s`` (a ``Mul`` node inserted in front of the MatMul) and the
weight row multiplied by it. In fp32 the product is unchanged; in int8 the activation
needs far fewer levels for its outliers. The statistics come from a few hundred
calibration inputs.

The transform is exact in fp32 (tests check this) and model-agnostic: it applies to every
MatMul with a 2-D constant weight that narrows its input (``rows > columns``), i.e. the
feed-forward down-projections of a transformer.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from tiergate.demo._io import atomic_path
from tiergate.errors import ConfigError

__all__ = ["DEFAULT_ALPHA", "SmoothingReport", "smooth_down_projections"]

DEFAULT_ALPHA = 0.75
_FLOOR = 1e-5
_SCALE_LIMITS = (1e-3, 1e3)


@dataclass(frozen=True)
class SmoothingReport:
    """What smoothing did: how many MatMuls, from how many inputs, with which ``alpha``."""

    alpha: float
    matmuls: int
    calibration_inputs: int
    max_activation_ratio_before: float  # largest channel max / median channel max
    max_activation_ratio_after: float


def _onnx() -> Any:
    try:
        return importlib.import_module("onnx")
    except ImportError as exc:
        raise ConfigError(
            "smoothing needs 'onnx': pip install 'tiergate[build]'", missing="onnx"
        ) from exc


def smooth_down_projections(
    model_in: Path,
    model_out: Path,
    feeds: Iterable[Mapping[str, npt.NDArray[Any]]],
    *,
    alpha: float = DEFAULT_ALPHA,
) -> SmoothingReport:
    """Write ``model_out``: ``model_in`` with its down-projection MatMuls smoothed.

    ``feeds`` are model inputs (name → array) to measure activation ranges on, e.g. a
    few hundred tokenised training texts. Raises :class:`ConfigError` if the model has
    no MatMul to smooth or ``feeds`` is empty.
    """
    if not 0.0 < alpha < 1.0:
        raise ConfigError(f"alpha must be in (0, 1), got {alpha}", alpha=alpha)
    onnx = _onnx()
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    model = onnx.load(str(model_in))
    graph = model.graph
    weights = {init.name: init for init in graph.initializer}
    # activation tensor -> the MatMul nodes that read it with a narrowing constant weight
    targets: dict[str, list[Any]] = {}
    for node in graph.node:
        if node.op_type != "MatMul" or node.input[1] not in weights:
            continue
        shape = tuple(weights[node.input[1]].dims)
        if len(shape) == 2 and shape[0] > shape[1]:
            targets.setdefault(node.input[0], []).append(node)
    if not targets:
        raise ConfigError(f"{model_in.name} has no down-projection MatMul to smooth")

    # Measure per-channel activation maxima: expose the MatMul inputs as extra outputs.
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for name in targets:
        probe.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(
        probe.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"]
    )
    names = list(targets)
    amax: dict[str, npt.NDArray[np.float64]] = {}
    count = 0
    for feed in feeds:
        outputs = session.run(names, dict(feed))
        for name, value in zip(names, outputs, strict=True):
            arr = np.asarray(value)
            channel_max = np.abs(arr.reshape(-1, arr.shape[-1])).max(axis=0).astype(np.float64)
            amax[name] = np.maximum(amax[name], channel_max) if name in amax else channel_max
        count += 1
    if count == 0:
        raise ConfigError("smoothing needs at least one calibration input")

    ratios_before: list[float] = []
    ratios_after: list[float] = []
    smoothers: dict[str, Any] = {}
    for name, nodes in targets.items():
        rows = [numpy_helper.to_array(weights[n.input[1]]) for n in nodes]
        wmax = np.max([np.abs(w).max(axis=1) for w in rows], axis=0).astype(np.float64)
        a = np.maximum(amax[name], _FLOOR)
        scale = np.clip(a**alpha / np.maximum(wmax, _FLOOR) ** (1.0 - alpha), *_SCALE_LIMITS)
        ratios_before.append(float(a.max() / np.median(a)))
        ratios_after.append(float((a / scale).max() / np.median(a / scale)))
        inverse = numpy_helper.from_array((1.0 / scale).astype(np.float32), f"{name}/smooth_inv")
        graph.initializer.append(inverse)
        smoothed = f"{name}/smoothed"
        smoothers[name] = helper.make_node(
            "Mul", [name, inverse.name], [smoothed], name=f"{name}/smooth"
        )
        for node, w in zip(nodes, rows, strict=True):
            scaled = (w.astype(np.float64) * scale[:, None]).astype(np.float32)
            weights[node.input[1]].CopyFrom(numpy_helper.from_array(scaled, node.input[1]))
            node.input[0] = smoothed

    # Each Mul goes right before the first node that reads its output: order stays topological.
    by_output = {mul.output[0]: mul for mul in smoothers.values()}
    nodes = list(graph.node)
    del graph.node[:]
    for node in nodes:
        for name in node.input:
            if name in by_output:
                graph.node.append(by_output.pop(name))
        graph.node.append(node)
    with atomic_path(model_out) as tmp:
        onnx.save(model, str(tmp))
    return SmoothingReport(
        alpha=alpha,
        matmuls=sum(len(n) for n in targets.values()),
        calibration_inputs=count,
        max_activation_ratio_before=round(max(ratios_before), 1),
        max_activation_ratio_after=round(max(ratios_after), 1),
    )
