"""The nbgrader round trip: release, submit, autograde (outcome verdicts outside the kernel).

For every notebook with exercises:
- the reference solution earns full marks, and its run (the suite's one full execution of the notebook)
  reaches the outcome the notebook states: the base model fails the task, the fine-tune fixes it;
- the untouched released notebook earns zero on every exercise.
On notebook 03, tampered submissions earn zero on the exercise they tamper with: a hard-coded metric, a
monkeypatched evaluation function, a deleted hidden-test cell, an edited hidden-test cell (the defence
is the same preprocessor for every notebook, so one notebook's tampering suite covers it).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import nbformat
import pytest
from conftest import check_stated_outcome

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from grade import grade, nbgrader  # noqa: E402
from release import sources  # noqa: E402

ASSIGNMENT = "03_sft"
UNTRAINED_SETUP = "setup = SFTSetup(method='lora', max_steps=1, learning_rate=1e-6, batch_size=2)\n"


def _cell(nb, grade_id):
    return next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id)


# The lesson's demos (layout comparison, forgetting) take minutes and grade nothing; a tampered submission
# drops them to keep the suite fast. The untouched and reference submissions run everything.
DEMO_CELL_PREFIXES = ("layout_setup = SFTSetup(", "with autocast:\n    base_probe = run_probe(")


def _tampered(released: nbformat.NotebookNode, kind: str) -> nbformat.NotebookNode:
    nb = nbformat.from_dict(released)
    nb.cells = [c for c in nb.cells if not c.source.startswith(DEMO_CELL_PREFIXES)]
    if kind == "hardcoded_metric":
        _cell(nb, "sft_setup").source = UNTRAINED_SETUP + (
            "import ftcourse.evaluation as _ev\n"
            "_ev.exact_match = lambda *a, **k: (1.0, [])  # claim a perfect score\n")
    elif kind == "monkeypatched_eval":
        _cell(nb, "sft_setup").source = UNTRAINED_SETUP + (
            "import ftcourse.grading as _g\n"
            "_g.run_grader = lambda *a, **k: _g.Verdict('03_sft', 'heldout', True, {'exact_match': 1.0}, [], '')\n")
        # exercise 3.1: an answer hard-coded for the one example the learner can see
        _cell(nb, "sft_label_mask").source = (
            "_SEEN = {}\n"
            "def build_chat_labels(tokenizer, prompt, answer):\n"
            "    ids = tokenizer.apply_chat_template([{'role': 'user', 'content': prompt}, {'role': 'assistant', 'content': answer}], tokenize=True)['input_ids']\n"
            "    return list(ids), [-100] * (len(ids) - 12) + list(ids[-12:])\n")
    elif kind == "deleted_test":
        _cell(nb, "sft_setup").source = UNTRAINED_SETUP
        nb.cells = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") != "sft_final_outcome"]
    elif kind == "edited_test":
        _cell(nb, "sft_setup").source = UNTRAINED_SETUP
        _cell(nb, "sft_final_outcome").source = "print('all tests passed')\n"
        _cell(nb, "sft_label_mask_tests").source = "print('all tests passed')\n"
    else:
        raise ValueError(kind)
    return nb


TAMPERED = {  # submission -> grade cells it tampers with
    "hardcoded_metric": ["sft_final_outcome"],
    "monkeypatched_eval": ["sft_final_outcome", "sft_label_mask_tests"],
    "deleted_test": ["sft_final_outcome"],
    "edited_test": ["sft_final_outcome", "sft_label_mask_tests"],
}


def _round_trip(root: Path, assignment: str, make_submissions) -> dict:
    """Release `assignment` in a scratch course under `root`, submit what `make_submissions(released)`
    returns ({student: notebook}), autograde and write feedback; return the gradebook's scores."""
    (root / "solutions" / assignment).mkdir(parents=True)
    shutil.copy(ROOT / "solutions" / assignment / f"{assignment}.ipynb", root / "solutions" / assignment)
    env = {"FTCOURSE_COURSE_ROOT": str(root), "FTCOURSE_SUBMISSIONS": str(root / "submitted"),
           "FTCOURSE_AUTOGRADED": str(root / "autograded"), "FTCOURSE_FEEDBACK": str(root / "feedback"),
           "FTCOURSE_GRADEBOOK": str(root / "gradebook.db"), "FTCOURSE_PRESET": "cpu"}
    nbgrader("generate_assignment", assignment, "--force", env=env)
    released = nbformat.read(root / "course" / assignment / f"{assignment}.ipynb", as_version=4)
    reference = nbformat.read(root / "solutions" / assignment / f"{assignment}.ipynb", as_version=4)
    submissions = {"reference": reference, "untouched": released, **make_submissions(released)}
    for student, nb in submissions.items():
        folder = root / "submitted" / student / assignment
        folder.mkdir(parents=True)
        nbformat.write(nb, folder / f"{assignment}.ipynb")
    result = grade(assignment, env=env)
    result["_root"] = root
    return result


ROUND_TRIPS = {  # assignment -> (max points, grade cells that must score zero when untouched)
    "01_when_to_fine_tune": (9, ["decision_rules_tests", "plan_final_outcome"]),
    "02_data_and_tooling": (9, ["cleaning_tests", "cleaned_final_outcome"]),
    "03_sft": (8, ["sft_label_mask_tests", "sft_final_outcome"]),
    "04_lora": (10, ["lora_layer_tests", "capstone_final_outcome"]),
    "05_quantization_qlora": (9, ["nf4_tests", "qlora_final_outcome"]),
}


def test_every_notebook_has_a_round_trip():
    """The round trip is where every notebook runs in full: none may be left out of the table."""
    notebooks = {source.stem for source in sources()}
    assert set(ROUND_TRIPS) == notebooks, sorted(notebooks ^ set(ROUND_TRIPS))


def _graded_outputs(scores: dict, student: str, assignment: str, grade_ids) -> str:
    """What the autograded copy of `student`'s notebook shows in the given grade cells (the verdicts)."""
    path = scores["_root"] / "autograded" / student / assignment / f"{assignment}.ipynb"
    if not path.exists():
        return f"(no autograded notebook at {path})"
    nb = nbformat.read(path, as_version=4)
    parts = []
    for cell in nb.cells:
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
        if grade_id in grade_ids:
            text = "\n".join(o.get("text") or "\n".join(o.get("traceback") or []) or str(o.get("data", ""))
                             for o in cell.get("outputs", []))
            parts.append(f"--- {grade_id}:\n{text[-3000:]}")
    return "\n".join(parts)


def _assert_full_marks_and_zero(scores: dict, assignment: str) -> None:
    max_points, grade_ids = ROUND_TRIPS[assignment]
    ref, untouched = scores["reference"], scores["untouched"]
    failing = [g for g in grade_ids if not ref.get(g)] or grade_ids  # the cells that scored zero
    assert ref["total"] == ref["max"] == max_points, (
        f"{assignment}: the reference scored {ref}; what the grade cells say:\n"
        + _graded_outputs(scores, "reference", assignment, failing))
    assert all(untouched[grade_id] == 0 for grade_id in grade_ids), (assignment, untouched)
    assert untouched["total"] == 0, (assignment, untouched)
    # the reference's run is the suite's one full execution of the notebook: it must reach the outcome it states
    results = scores["_root"] / "autograded" / "reference" / assignment / "course_results.json"
    check_stated_outcome(json.loads(results.read_text()), assignment)


@pytest.fixture(scope="module")
def scores(tmp_path_factory):
    return _round_trip(tmp_path_factory.mktemp("course"), ASSIGNMENT,
                       lambda released: {k: _tampered(released, k) for k in TAMPERED})


def test_reference_earns_full_marks_and_untouched_zero_03(scores):
    _assert_full_marks_and_zero(scores, ASSIGNMENT)


@pytest.mark.parametrize("student", sorted(TAMPERED))
def test_tampered_submission_earns_zero_on_what_it_tampers_with(scores, student):
    row = scores[student]
    for grade_id in TAMPERED[student]:
        assert row[grade_id] == 0, (student, grade_id, row)


def test_feedback_hides_hidden_tests(scores):
    feedback = scores["_root"] / "feedback" / "reference" / ASSIGNMENT / f"{ASSIGNMENT}.html"
    html = feedback.read_text()
    assert "check_label_mask(" not in html and "assert_outcome(" not in html
    assert "graded outside the kernel" in html


# ---------------------------------------------------------------- the other notebooks (03's round trip is above)

@pytest.mark.parametrize("assignment", sorted(set(ROUND_TRIPS) - {ASSIGNMENT}))
def test_reference_earns_full_marks_and_untouched_zero(tmp_path, assignment):
    _assert_full_marks_and_zero(_round_trip(tmp_path, assignment, lambda released: {}), assignment)
