"""What a notebook reports to `make course`: its headline metrics, written beside the executed copy."""

from __future__ import annotations

import json
from pathlib import Path

RESULTS_FILE = "course_results.json"
RECORD_TAG = "course-record"  # the solution notebook's last cell, which calls write_results: never released


def is_record_cell(cell) -> bool:
    """Whether a notebook cell (nbformat or jupytext) is the instructor's `course-record` cell."""
    return RECORD_TAG in cell.metadata.get("tags", ())


def write_results(notebook: str, base_metric: float, tuned_metric: float, metric: str, **extra) -> Path:
    """Write the notebook's headline numbers to `course_results.json` in the working directory."""
    path = Path.cwd() / RESULTS_FILE
    record = {"notebook": notebook, "metric": metric, "base_metric": base_metric, "tuned_metric": tuned_metric, **extra}
    path.write_text(json.dumps(record, indent=2))
    return path
