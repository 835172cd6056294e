"""What a notebook reports to `make course`: its headline metrics, written beside the executed copy."""

from __future__ import annotations

import json
from pathlib import Path

RESULTS_FILE = "course_results.json"


def write_results(notebook: str, base_metric: float, tuned_metric: float, metric: str, **extra) -> Path:
    """Write the notebook's headline numbers to `course_results.json` in the working directory."""
    path = Path.cwd() / RESULTS_FILE
    record = {"notebook": notebook, "metric": metric, "base_metric": base_metric, "tuned_metric": tuned_metric, **extra}
    path.write_text(json.dumps(record, indent=2))
    return path
