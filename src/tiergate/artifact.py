"""The calibration artifact: versioned JSON written by `tiergate calibrate`."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tiergate.config import format_validation_error
from tiergate.errors import ConfigError

__all__ = ["FORMAT", "CalibrationArtifact", "read_artifact", "write_json_atomic"]

FORMAT = "tiergate.calibration/1"


class CalibrationArtifact(BaseModel):
    """Thresholds and temperatures per tier, with what was certified and on what data."""

    model_config = ConfigDict(frozen=True, extra="allow")

    format: str = Field(FORMAT, description="Artifact format identifier.")
    version: str = Field(description="Content hash; reported in every response.")
    service: str = Field(description="Service the artifact was made for.")
    method: str = Field(description="How thresholds were chosen.")
    thresholds: dict[str, float] = Field(description="Confidence threshold per non-final tier.")
    temperatures: dict[str, float] = Field(description="Temperature per tier.")
    model_versions: dict[str, str] = Field(description="Model version per tier when calibrated.")
    target_accuracy: float | None = Field(None, description="Declared accuracy target.")
    confidence: float | None = Field(None, description="Declared confidence level.")


def artifact_version(body: dict[str, Any]) -> str:
    """Hash of everything that changes behaviour (not timestamps or reports)."""
    keys = ("service", "method", "thresholds", "temperatures", "model_versions", "data")
    payload = json.dumps({k: body.get(k) for k in keys}, sort_keys=True).encode()
    return "cal-" + hashlib.sha256(payload).hexdigest()[:12]


def read_artifact(path: Path) -> CalibrationArtifact:
    """Load and validate an artifact; any problem is a :class:`ConfigError`."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read calibration artifact {path}: {exc}") from exc
    try:
        art = CalibrationArtifact.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, str(path))) from None
    if art.format != FORMAT:
        raise ConfigError(f"{path}: unsupported artifact format {art.format!r} (want {FORMAT})")
    for name, thr in art.thresholds.items():
        if not 0.0 <= thr <= 1.0 + 1e-6:
            raise ConfigError(f"{path}: threshold of tier {name!r} is {thr}, not in [0, 1]")
    for name, t in art.temperatures.items():
        if not t > 0:
            raise ConfigError(f"{path}: temperature of tier {name!r} is {t}, must be > 0")
    return art


def write_json_atomic(path: Path, body: dict[str, Any]) -> None:
    """Write JSON so a reader never sees a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; artifacts are meant to be shared
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(body, f, indent=2, sort_keys=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
