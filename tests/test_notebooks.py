"""Every solution notebook executes with papermill at PRESET=cpu and reaches its stated outcome."""

import json
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from run_course import score_notebook  # noqa: E402
NOTEBOOKS = sorted(p for p in ROOT.glob("solutions/[0-9][0-9]_*/*.ipynb") if p.stem == p.parent.name)


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_solution_notebook_executes_on_cpu_preset(notebook, tmp_path, monkeypatch):
    import papermill

    monkeypatch.setenv("FTCOURSE_PRESET", "cpu")
    out = tmp_path / notebook.name
    papermill.execute_notebook(str(notebook), str(out), parameters={"PRESET": "cpu"}, cwd=str(tmp_path),
                               progress_bar=False, kernel_name="python3")
    results = json.loads((tmp_path / "course_results.json").read_text())
    assert results["notebook"] == notebook.stem
    assert results["base_metric"] <= 0.2, results  # the task is one the base model fails ...
    assert results["tuned_metric"] >= results["base_metric"] + 0.4, results  # ... and the fine-tune fixes
    earned, total = score_notebook(out)  # every hidden test in the executed solution passed
    assert total > 0 and earned == total, (earned, total)
