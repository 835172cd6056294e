"""The scripts a person runs by hand (`make benchmark`, the measurements the README quotes) are not executed by
the suite: they take minutes. This checks what a refactor can break without running them: every name a script
reads is defined somewhere in it, imported, or a builtin (a NameError found here, not after ten minutes)."""

from __future__ import annotations

import ast
import builtins

import pytest
from conftest import ROOT

SCRIPTS = sorted((ROOT / "scripts").glob("*.py"))


def undefined_names(source: str) -> set[str]:
    """Names loaded anywhere in `source` that nothing in it binds (coarse: one scope for the whole file)."""
    tree = ast.parse(source)
    bound = set(dir(builtins)) | {"__file__", "__name__", "__doc__"}
    loaded = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (loaded if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
    return loaded - bound


def test_the_check_finds_a_missing_import():
    assert undefined_names("def main():\n    return measure_in_child('x')\n") == {"measure_in_child"}
    assert undefined_names("from bench_io import measure_in_child\ndef main():\n    return measure_in_child('x')\n") == set()


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_every_name_a_script_reads_is_defined(script):
    assert not undefined_names(script.read_text()), f"{script.name} reads names it never defines or imports"


def _run_course():
    """scripts/run_course.py as a module (it is a script, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("run_course", ROOT / "scripts" / "run_course.py")
    run_course = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run_course)
    return run_course


def test_course_table_reports_the_measure_the_grader_checks():
    """07's verdict reports the judge's score and the share right; the table's held-out columns are the judge's
    (the gain its grader checks), 08's the share right, 10's MRR@10."""
    run_course = _run_course()
    metrics = {"judge": 0.9, "base_judge": 0.6, "right": 0.95, "base_right": 0.5, "probe_accuracy": 0.7,
               "base_probe_accuracy": 0.68}
    judged = run_course.heldout_columns({"metrics": metrics, "checks": [["judge_gain", 0.3, ">=", 0.15, True]]})
    assert judged == {"heldout_base": 0.6, "heldout_tuned": 0.9, "probe_base": 0.68, "probe_tuned": 0.7}
    checked = run_course.heldout_columns({"metrics": metrics, "checks": [["right_gain", 0.45, ">=", 0.12, True]]})
    assert (checked["heldout_base"], checked["heldout_tuned"]) == (0.5, 0.95)
    ranked = run_course.heldout_columns({"metrics": {"mrr@10": 0.8, "base_mrr@10": 0.3},
                                         "checks": [["mrr_gain", 0.5, ">=", 0.45, True]]})
    assert (ranked["heldout_base"], ranked["heldout_tuned"]) == (0.3, 0.8)
    student = run_course.heldout_columns({"metrics": {"exact_match": 0.6, "labels_only_exact_match": 0.17},
                                          "checks": [["gain_over_labels_only", 0.43, ">=", 0.3, True]]})
    assert (student["heldout_base"], student["heldout_tuned"]) == (0.17, 0.6)
    ranking = run_course.heldout_columns({"metrics": {"padded_accuracy": 1.0, "echo_accuracy": 0.95, "wrong_accuracy": 0.5},
                                          "checks": [["padded_accuracy", 1.0, ">=", 0.9, True],
                                                     ["echo_accuracy", 0.95, ">=", 0.9, True]]})
    assert (ranking["heldout_base"], ranking["heldout_tuned"]) == (None, 0.95)  # 06: the worst graded kind
    failed = run_course.heldout_columns({"metrics": {}, "checks": []})
    assert failed == {"heldout_base": None, "heldout_tuned": None, "probe_base": None, "probe_tuned": None}


def test_learner_minutes_leave_out_the_hidden_tests_and_the_course_record(tmp_path):
    import nbformat

    from ftcourse.reporting import RECORD_TAG

    run_course = _run_course()
    cells = [nbformat.v4.new_code_cell("train()"),
             nbformat.v4.new_code_cell("### BEGIN HIDDEN TESTS\nassert_outcome()"),
             nbformat.v4.new_code_cell("write_results()", metadata={"tags": [RECORD_TAG]}),
             nbformat.v4.new_markdown_cell("BEGIN HIDDEN TESTS in prose")]
    for cell, seconds in zip(cells, (90.0, 18.0, 0.5, 7.0)):
        cell.metadata["papermill"] = {"duration": seconds}
    path = tmp_path / "executed.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=cells), path)
    assert run_course.instructor_only_minutes(path) == pytest.approx(18.5 / 60)
    assert run_course.instructor_only_minutes(tmp_path / "missing.ipynb") == 0.0
