"""Evaluation of a config on labelled data: metrics, baselines, plots, HTML report."""

from __future__ import annotations

from tiergate.evaluation.evaluate import evaluate_config, routing_curves

__all__ = ["evaluate_config", "routing_curves"]
