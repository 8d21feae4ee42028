"""Evaluation of a config on labelled data: metrics, baselines, plots, HTML report."""

from __future__ import annotations

from tiergate.evaluation.check import CheckResult, CheckRow, check_config, render_table
from tiergate.evaluation.evaluate import evaluate_config, routing_curves

__all__ = [
    "CheckResult",
    "CheckRow",
    "check_config",
    "evaluate_config",
    "render_table",
    "routing_curves",
]
