"""Run the chaos suite and collect its per-scenario numbers into bench/results/chaos.json.

Run: `.venv/bin/python bench/chaos.py` (about a minute; needs the built demo).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    rows_file = Path(tempfile.mkdtemp()) / "chaos.jsonl"
    env = {**os.environ, "CHAOS_RESULTS": str(rows_file)}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/chaos", "-q", "-p", "no:cacheprovider"],
        cwd=ROOT, env=env, check=False,
    )  # fmt: skip
    rows = (
        [json.loads(line) for line in rows_file.read_text().splitlines()]
        if rows_file.exists()
        else []
    )
    out = ROOT / "bench" / "results" / "chaos.json"
    out.write_text(
        json.dumps(
            {
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "command": "python bench/chaos.py",
                "suite_passed": proc.returncode == 0,
                "scenarios": [r for r in rows if r.get("suite") != "remote"],
                # tests/chaos/test_remote_chaos.py: a real MLServer as a remote last tier
                "remote": [r for r in rows if r.get("suite") == "remote"],
            },
            indent=2,
        )
        + "\n"
    )
    verdict = "passed" if proc.returncode == 0 else "FAILED"
    print(f"wrote {out} ({len(rows)} scenarios, suite {verdict})")
    sys.exit(proc.returncode)


if __name__ == "__main__":
    main()
