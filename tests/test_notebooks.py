"""The notebooks as papermill runs them: a `parameters` cell in every one, and one real papermill run.

Every solution notebook is executed end to end in the nbgrader round trip (tests/test_nbgrader_roundtrip.py),
which also checks its stated outcome (the base model fails the task, the fine-tune fixes it) and its marks.
What papermill adds is the parameter injection CI and `make course` rely on; executing every notebook a
second time here would only repeat the round trip's run (about 14 minutes of CI for five notebooks), so
one notebook, the shortest, runs under papermill with its preset injected.
"""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from conftest import check_stated_outcome  # noqa: E402
from release import sources  # noqa: E402
from run_course import score_notebook  # noqa: E402

NOTEBOOKS = [source.with_suffix(".ipynb") for source in sources()]
RELEASED = [ROOT / "course" / source.stem / f"{source.stem}.ipynb" for source in sources()]
PAPERMILL_RUN = "01_when_to_fine_tune"


@pytest.mark.parametrize("notebook", NOTEBOOKS + RELEASED, ids=[f"{p.parts[-3]}/{p.stem}" for p in NOTEBOOKS + RELEASED])
def test_every_notebook_takes_the_preset_as_a_papermill_parameter(notebook):
    import papermill

    parameters = papermill.inspect_notebook(str(notebook))
    assert set(parameters) >= {"PRESET", "SEED"}, (notebook, sorted(parameters))
    assert parameters["PRESET"]["default"] == '"auto"', parameters["PRESET"]


def test_papermill_runs_a_notebook_with_its_preset_injected(tmp_path, monkeypatch):
    import papermill

    notebook = next(p for p in NOTEBOOKS if p.stem == PAPERMILL_RUN)
    monkeypatch.setenv("FTCOURSE_PRESET", "cpu")  # papermill cannot reach the graders' processes: they read this
    out = tmp_path / notebook.name
    papermill.execute_notebook(str(notebook), str(out), parameters={"PRESET": "cpu"}, cwd=str(tmp_path),
                               progress_bar=False, kernel_name="python3")
    injected = [c for c in json.loads(out.read_text())["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
    assert len(injected) == 1 and 'PRESET = "cpu"' in "".join(injected[0]["source"]), injected
    check_stated_outcome(json.loads((tmp_path / "course_results.json").read_text()), notebook.stem)
    earned, total = score_notebook(out)  # every hidden test in the executed solution passed
    assert total > 0 and earned == total, (earned, total)
