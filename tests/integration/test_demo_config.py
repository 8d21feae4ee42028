"""`serve`/`predict` without a config: the demo build never runs in the serving process."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from tiergate.cli import _demo_config
from tiergate.errors import ConfigError

pytestmark = pytest.mark.integration

HEAVY = ("torch", "transformers", "sentence_transformers")

# What `tiergate serve` does without a config, short of binding a port.
SERVE = """
import json, sys
from pathlib import Path
from rich.console import Console
from tiergate.api import create_app
from tiergate.cli import _demo_config
from tiergate.config import load_config
from tiergate.service import Service

path = _demo_config(Console(stderr=True), Path(sys.argv[1]))
service = Service.from_config(load_config(path))
create_app(service)
heavy = sorted({m.split(".")[0] for m in sys.modules} & set(sys.argv[2:]))
service.close()
print(json.dumps({"config": str(path), "heavy": heavy}))
"""


def test_serving_the_built_demo_imports_no_torch(demo_dir: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", SERVE, str(demo_dir), *HEAVY],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    body = json.loads(out.stdout.strip().splitlines()[-1])
    assert body == {"config": str((demo_dir / "config.yaml").resolve()), "heavy": []}, out.stderr
    assert "building the demo" not in out.stderr  # the cached fast path: no child build


def test_a_failed_build_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    target = blocker / "demo"  # the child build cannot create it and exits non-zero
    said = io.StringIO()
    console = Console(file=said, width=1000)
    with pytest.raises(ConfigError) as info:
        _demo_config(console, target)
    assert "failed" in info.value.message and "tiergate demo build" in info.value.message
    assert info.value.fields["exit_code"] != 0
    assert f"building the demo in {target}" in said.getvalue()


def test_the_three_tier_demo_serves_with_its_own_certificate(demo_dir: Path) -> None:
    import asyncio

    from tiergate.config import load_config
    from tiergate.service import Service

    manifest = json.loads((demo_dir / "manifest.json").read_text())
    three = manifest["three_tier"]
    assert three["config"] == "config-3tier.yaml"
    middle = three["middle"]
    assert middle["test_accuracy"] > manifest["tiers"]["fast"]["test_accuracy"]
    cal = three["calibration"]
    assert cal["achieved"]["accuracy_lower_bound"] >= cal["target_accuracy"]
    assert set(cal["thresholds"]) == {"fast", "middle"}
    service = Service.from_config(load_config(demo_dir / "config-3tier.yaml"))
    try:
        assert [t.name for t in service.tiers] == ["fast", "middle", "accurate"]
        assert [t.threshold for t in service.tiers[:2]] == [
            cal["thresholds"]["fast"], cal["thresholds"]["middle"]
        ]  # fmt: skip
        # what the build measured is what a served config loads
        assert service.tiers[1].version == middle["model_version"]
        r = asyncio.run(service.predict("an odd film, neither good nor bad")).to_dict()
        assert r["path"][0] == "fast" and r["output"] in ("positive", "negative")
    finally:
        service.close()
