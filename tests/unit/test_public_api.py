"""The public face: what `import tiergate` offers is deliberate."""

from __future__ import annotations

import tiergate


def test_exported_names() -> None:
    assert set(tiergate.__all__) == {
        "CalibrationError", "CallableAdapter", "Cascade", "ConfigError", "DeadlineExceededError",
        "FallbackPolicy", "InputError", "InputTooLargeError", "ModelAdapter", "ModelError",
        "NotReadyError", "OverloadError", "Result", "Service", "ServiceConfig", "SklearnAdapter",
        "Tier", "TierAnswer", "TierConfig", "TiergateError", "__version__", "load_config",
    }  # fmt: skip
    for name in tiergate.__all__:
        assert getattr(tiergate, name) is not None


def test_errors_form_one_tree() -> None:
    for name in tiergate.__all__:
        obj = getattr(tiergate, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, tiergate.TiergateError)
