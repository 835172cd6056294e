"""The labs as a learner meets them: real JupyterLab in Chromium (scripts/browser_labs.py), every control tried.

Needs Debian's `chromium` (`.ci/run` installs it when missing) and Playwright (requirements.txt). Outside CI a
machine without Chromium skips this test and says why; in CI (CI=true) a missing Chromium fails it.
Screenshots and report-<notebook>.json: build/browser/. The run is shared with the nbgrader round trip of the lab notebooks
(their one execution per test session).
"""

import json
import os
import sys
from pathlib import Path

import pytest
from conftest import chromium_present

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import browser_labs  # noqa: E402


def test_lab_notebooks_are_found_and_each_lab_widget_is_marked():
    assert browser_labs.lab_notebooks() == ["04_lora", "05_quantization_qlora", "06_reward_models_rlhf",
                                            "09_distillation"]
    for module in ("labs.py", "rlhf.py"):  # the labs of 04, 05 and 09, and 06's RLHF Lab beside its instruments
        labs_source = (ROOT / "ftcourse" / module).read_text()
        widgets = [line.split("def ")[1].split("(")[0] for line in labs_source.splitlines() if line.startswith("def ")
                   and "_lab_widget(" in line]
        assert widgets and labs_source.count("_mark(widgets.VBox(") == len(widgets)  # each lab carries its CSS classes


@pytest.mark.parametrize("slug", browser_labs.lab_notebooks())
def test_labs_in_a_real_browser(slug, lab_runs):
    """Each lab notebook as a learner who did the exercises has it, run in JupyterLab, then every control. This
    run is also the notebook's execution for its nbgrader round trip (tests/conftest.py, `executed_solution`)."""
    if not chromium_present():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{browser_labs.CHROMIUM} is missing: .ci/run installs Debian's chromium package (apt-get "
                        "install chromium); or set FTCOURSE_CHROMIUM to another Chromium build")
        pytest.skip(f"{browser_labs.CHROMIUM} is missing (apt-get install chromium); CI runs this test")
    results = lab_runs(slug)
    report = results["notebooks"][slug]
    print(json.dumps({k: report.get(k) for k in ("run_all_s", "cells_run", "code_cells", "dialog_on_open")}))
    assert not results["problems"], "\n".join(results["problems"])
    assert report["dialog_on_open"] is False and report["cells_run"] == report["code_cells"] > 0
    controls = report["controls"]
    assert controls and all(c["readout_changed"] and c["figure_changed"] and not c["error"] for c in controls)
    assert all(Path(ROOT / c["screenshot"]).is_file() for c in controls)
    if slug == "05_quantization_qlora":
        button = next(c for c in controls if c["kind"] == "button")
        assert button["readout_changed"] and button["figure_changed"] and "model perplexity" in button["readout"]
    if slug == "04_lora":
        assert {c["kind"] for c in controls} == {"slider", "checkbox"}
