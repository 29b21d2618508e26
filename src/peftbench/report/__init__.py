"""Report from result JSON files only (no torch import anywhere under report/)."""

from peftbench.report.build import build_report

__all__ = ["build_report"]
