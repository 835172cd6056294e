"""The nbgrader preprocessor: every graded cell's output is the grader process's verdict.

nbgrader scores a test cell by its outputs (an error scores 0). Autograde does not execute the learner's
notebook at all (see autograder/nbgrader_config.py: no `Execute` step): the kernel never decided anything,
and not running it removes what a kernel could do to a grading run. `GraderVerdicts` reads the
submission's solution cells (sources only, never executed here), its `PRESET` and `SEED` parameters
(literal values, parsed, never executed), starts the grader process (`ftcourse.grading.grader grade`)
and writes each verdict into its graded cell. A graded cell the registry does not know scores 0.
"""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path

import nbformat
from nbgrader.preprocessors import NbGraderPreprocessor
from traitlets import Integer

from .grader import launch
from .registry import BY_GRADE_ID, for_notebook
from .verdict import Verdict

PRESET_ENV = "FTCOURSE_PRESET"  # the instructor's choice of preset for a grading run; it wins over the submission's
VERDICTS_ENV = "FTCOURSE_VERDICTS_DIR"  # where `make grade` collects each submission's verdicts for its table
MARK = "[graded by the course's grader, outside the notebook]"


def _outputs_for(passed: bool, text: str) -> list:
    if passed:
        return [nbformat.v4.new_output("stream", name="stdout", text=text + "\n")]
    return [nbformat.v4.new_output("error", ename="AssertionError", evalue=text, traceback=[text])]


def solution_sources(nb) -> dict[str, str]:
    """{grade_id: source} of the solution cells; a grade_id that appears twice is left out (graded as missing)."""
    sources: dict[str, str] = {}
    seen: set[str] = set()
    for cell in nb.cells:
        meta = cell.get("metadata", {}).get("nbgrader", {})
        grade_id = meta.get("grade_id")
        if not grade_id or not meta.get("solution") or cell.get("cell_type") != "code":
            continue
        if grade_id in seen:
            sources.pop(grade_id, None)
        else:
            sources[grade_id] = cell.get("source", "")
        seen.add(grade_id)
    return sources


def released_sources(notebook: str) -> dict[str, str]:
    """{grade_id: source} of the solution cells of the release being graded ($FTCOURSE_COURSE_ROOT/course/<nb>/,
    what `make grade` generated): the stubs. {} when there is none."""
    root = os.environ.get("FTCOURSE_COURSE_ROOT") or Path(__file__).resolve().parents[2]  # make grade sets it
    path = Path(root) / "course" / notebook / f"{notebook}.ipynb"
    try:
        return solution_sources(nbformat.read(path, as_version=4))
    except (OSError, ValueError):
        return {}


def notebook_parameters(nb) -> dict:
    """`PRESET` and `SEED` as the submission set them (parameters cell, then papermill's injected one), parsed."""
    found: dict = {}
    for cell in nb.cells:
        tags = cell.get("metadata", {}).get("tags", [])
        if cell.get("cell_type") != "code" or not {"parameters", "injected-parameters"} & set(tags):
            continue
        try:
            tree = ast.parse(cell.get("source", ""))
        except SyntaxError:
            continue
        for node in tree.body:
            if (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                    and isinstance(node.value, ast.Constant)):
                found[node.targets[0].id] = node.value.value
    return found


def choose_preset(submitted) -> tuple[str, str]:
    """(resolved preset name, where it came from): the instructor's $FTCOURSE_PRESET, else the submission's."""
    from ..presets import PRESET_NAMES, auto_preset_name

    instructor = os.environ.get(PRESET_ENV, "").strip().lower()
    if instructor:
        if instructor not in PRESET_NAMES:
            raise ValueError(f"${PRESET_ENV}={instructor!r}; expected one of {', '.join(PRESET_NAMES)}.")
        name, source = instructor, "instructor"
    elif isinstance(submitted, str) and submitted.strip().lower() in PRESET_NAMES:
        name, source = submitted.strip().lower(), "submission"
    else:
        name, source = "auto", "default"
    if name == "auto":
        return auto_preset_name(), source
    if name in ("t4", "a100") and auto_preset_name() == "cpu":
        return "cpu", f"{source} asked for {name}; no GPU here"
    return name, source


class GraderVerdicts(NbGraderPreprocessor):
    """Replace every graded cell's outputs with the grader process's verdict."""

    timeout_s = Integer(7200, help="seconds the grader process may take for one submission").tag(config=True)

    def preprocess(self, nb, resources):
        info = resources.get("nbgrader", {})
        notebook = info.get("notebook") or Path(resources.get("unique_key", "")).stem
        params = notebook_parameters(nb)
        preset, preset_source = choose_preset(params.get("PRESET"))
        seed = params.get("SEED") if isinstance(params.get("SEED"), int) and not isinstance(params.get("SEED"), bool) else 0
        sources = solution_sources(nb)
        released = released_sources(notebook)
        request = {"notebook": notebook, "cells": sources, "preset": preset, "seed": seed,
                   "as_released": sorted(k for k, v in sources.items()
                                       if k in released and v == released[k] and "NotImplementedError" in v)}
        raw, why = (launch(["grade"], stdin=json.dumps(request), timeout_s=self.timeout_s, with_secret=True)
                    if for_notebook(notebook) else ({}, ""))
        verdicts = {k: Verdict.from_dict(v) for k, v in (raw or {}).items()}
        self.log.info("GraderVerdicts %s: preset %s (%s); %s", notebook, preset, preset_source,
                      ", ".join(f"{k} {'pass' if v.passed else 'fail'}" for k, v in verdicts.items()) or why[-300:])
        summary = {"notebook": notebook, "preset": preset, "preset_source": preset_source, "seed": seed,
                   "grader_error": "" if raw is not None else why, "verdicts": {}}
        for cell in nb.cells:
            meta = cell.get("metadata", {}).get("nbgrader", {})
            if not meta.get("grade") or meta.get("solution") or cell.get("cell_type") != "code":
                continue
            grade_id = meta.get("grade_id")
            if grade_id in verdicts:
                verdict = verdicts[grade_id]
                passed, text = verdict.passed, str(verdict)
                summary["verdicts"][grade_id] = {"passed": verdict.passed, "reason": verdict.reason,
                                                 "metrics": verdict.metrics}
            elif grade_id not in BY_GRADE_ID:
                passed, text = False, f"{grade_id!r} is not a graded cell of the course's exercise registry."
            else:
                passed, text = False, f"Not graded: {why or 'the grader returned no verdict for this cell.'}"
                summary["verdicts"][grade_id] = {"passed": False, "reason": text.splitlines()[0][:200], "metrics": {}}
            cell.outputs = _outputs_for(passed, f"{MARK} {text}")
            cell.execution_count = None
        folder = os.environ.get(VERDICTS_ENV)
        if folder and info.get("student"):
            Path(folder).mkdir(parents=True, exist_ok=True)
            (Path(folder) / f"{info['student']}.json").write_text(json.dumps(summary, default=str))
        return nb, resources
