"""Activation smoothing on a small real ONNX graph, run with onnxruntime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import QuantType, quantize_dynamic

from tiergate.demo.smoothing import smooth_down_projections
from tiergate.errors import ConfigError

D_IN, D_FF = 16, 64


def _ffn(path: Path, *, outlier: float = 300.0) -> None:
    """x → MatMul(up) → Relu → MatMul(down) → y: a transformer FFN with outlier channels."""
    rng = np.random.default_rng(0)
    up = rng.normal(0.0, 0.3, (D_IN, D_FF)).astype(np.float32)
    up[:, :3] *= outlier  # three hidden channels far larger than the rest, as after GELU
    down = rng.normal(0.0, 0.3, (D_FF, D_IN)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "up"], ["h"], name="up"),
            helper.make_node("Relu", ["h"], ["a"], name="act"),
            helper.make_node("MatMul", ["a", "down"], ["y"], name="down"),
        ],
        "ffn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, D_IN])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, D_IN])],
        [numpy_helper.from_array(up, "up"), numpy_helper.from_array(down, "down")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(["y"], {"x": x})[0])


def _feeds(n: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.normal(size=(8, D_IN)).astype(np.float32)} for _ in range(n)]


def test_smoothing_is_exact_in_fp32_and_flattens_the_activation(tmp_path: Path) -> None:
    src, out = tmp_path / "ffn.onnx", tmp_path / "smoothed.onnx"
    _ffn(src)
    report = smooth_down_projections(src, out, _feeds(32, 1), alpha=0.75)
    assert report.matmuls == 1  # only the narrowing MatMul (64 → 16), not the up-projection
    assert report.calibration_inputs == 32
    assert report.max_activation_ratio_after < report.max_activation_ratio_before / 4
    x = _feeds(1, 2)[0]["x"]
    np.testing.assert_allclose(_run(out, x), _run(src, x), rtol=1e-4, atol=1e-4)


def test_smoothing_reduces_dynamic_int8_error(tmp_path: Path) -> None:
    src, smoothed = tmp_path / "ffn.onnx", tmp_path / "smoothed.onnx"
    _ffn(src)
    smooth_down_projections(src, smoothed, _feeds(32, 1))
    for fp32 in (src, smoothed):
        quantize_dynamic(
            str(fp32), str(fp32.with_suffix(".int8.onnx")), per_channel=True,
            weight_type=QuantType.QInt8, nodes_to_quantize=["down"],
        )  # fmt: skip
    x = np.vstack([f["x"] for f in _feeds(16, 3)])  # held out from the statistics
    ref = _run(src, x)

    def error(path: Path) -> float:
        return float(np.linalg.norm(_run(path, x) - ref) / np.linalg.norm(ref))

    plain, smooth = error(src.with_suffix(".int8.onnx")), error(smoothed.with_suffix(".int8.onnx"))
    assert smooth < plain / 2, (plain, smooth)


def test_smoothing_refuses_what_it_cannot_do(tmp_path: Path) -> None:
    src = tmp_path / "ffn.onnx"
    _ffn(src)
    with pytest.raises(ConfigError, match="alpha"):
        smooth_down_projections(src, tmp_path / "o.onnx", _feeds(1, 1), alpha=1.0)
    with pytest.raises(ConfigError, match="at least one"):
        smooth_down_projections(src, tmp_path / "o.onnx", [])
    assert not (tmp_path / "o.onnx").exists()
    wide = tmp_path / "wide.onnx"
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 8])],
        [numpy_helper.from_array(np.ones((4, 8), np.float32), "w")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(wide))
    with pytest.raises(ConfigError, match="no down-projection"):
        smooth_down_projections(wide, tmp_path / "o.onnx", _feeds(1, 1))
