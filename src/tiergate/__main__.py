"""`python -m tiergate` runs the CLI."""

from __future__ import annotations

from tiergate.cli import main

main()
