"""tiergate: serve a fast and an accurate model as calibrated tiers of one service."""

from __future__ import annotations

from tiergate.cascade import Cascade, FallbackPolicy
from tiergate.config import ServiceConfig, TierConfig, load_config
from tiergate.errors import (
    CalibrationError,
    ConfigError,
    DeadlineExceededError,
    InputError,
    InputTooLargeError,
    ModelError,
    NotReadyError,
    OverloadError,
    TiergateError,
)
from tiergate.models import CallableAdapter, ModelAdapter, SklearnAdapter
from tiergate.service import Service
from tiergate.tier import Tier
from tiergate.types import Result, TierAnswer

__all__ = [
    "CalibrationError",
    "CallableAdapter",
    "Cascade",
    "ConfigError",
    "DeadlineExceededError",
    "FallbackPolicy",
    "InputError",
    "InputTooLargeError",
    "ModelAdapter",
    "ModelError",
    "NotReadyError",
    "OverloadError",
    "Result",
    "Service",
    "ServiceConfig",
    "SklearnAdapter",
    "Tier",
    "TierAnswer",
    "TierConfig",
    "TiergateError",
    "__version__",
    "load_config",
]

__version__ = "0.1.0"
