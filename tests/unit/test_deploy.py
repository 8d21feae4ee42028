"""deploy/kubernetes: valid Kubernetes objects (offline schema check) and a valid config."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tiergate.config import load_config

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
MANIFESTS = sorted(DEPLOY.glob("*.yaml"))


def test_manifests_validate_against_the_kubernetes_schemas() -> None:
    # kubernetes-validate ships the API schemas: no cluster and no network needed.
    exe = shutil.which("kubernetes-validate", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("kubernetes-validate is not installed (pip install '.[dev]')")
    assert MANIFESTS
    p = subprocess.run(
        [exe, "--strict", "--kubernetes-version", "1.30.0", *map(str, MANIFESTS)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert p.returncode == 0, p.stdout + p.stderr


def test_the_shipped_service_config_loads(tmp_path: Path) -> None:
    (cm,) = [d for d in yaml.safe_load_all((DEPLOY / "configmap.yaml").read_text())
             if d and d["kind"] == "ConfigMap"]  # fmt: skip
    models = tmp_path / "models"
    models.mkdir()
    for name in ("fast.joblib", "calibration.json"):
        (models / name).write_text("{}")
    text = cm["data"]["config.yaml"].replace("/models/", f"{models}/")
    (tmp_path / "config.yaml").write_text(text)
    cfg = load_config(tmp_path / "config.yaml")
    assert cfg.auth.rate_limit_store == "redis" and cfg.tiers[1].model.kind == "v2-infer"
    grace = next(d for d in yaml.safe_load_all((DEPLOY / "deployment.yaml").read_text())
                 if d["kind"] == "Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]  # fmt: skip
    assert cfg.drain_grace_s + 5 < grace  # preStop sleep 5 s + the drain fit in the grace
