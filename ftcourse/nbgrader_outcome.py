"""An nbgrader preprocessor that decides outcome-graded cells outside the learner's kernel.

nbgrader scores a test cell by its outputs (an error or stderr output scores 0). Anything that runs in
the kernel, including the hidden test and the code that launches the grading process, can be patched by
the learner. `OutcomeVerdicts` runs after execution and before `SaveAutoGrades`, re-grades every cell
whose `grade_id` is listed in its `checks` (configured on the instructor side, never read from the
submission) and replaces that cell's outputs with its own verdict.

Check kinds:
- `{"kind": "outcome", "exercise": "03_sft"}`: run `ftcourse.grading` on the submission's artifacts,
  held-out split, in a separate process.
- `{"kind": "function", "exercise": "03_label_mask", "solution": "<grade_id of the solution cell>"}`:
  execute the source of the learner's solution cell in a fresh process and test the function it defines.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
from nbgrader.preprocessors import NbGraderPreprocessor
from traitlets import Dict, Integer

from . import grading


def _outputs_for(passed: bool, text: str) -> list:
    if passed:
        return [nbformat.v4.new_output("stream", name="stdout", text=text + "\n")]
    return [nbformat.v4.new_output("error", ename="AssertionError", evalue=text, traceback=[text])]


def run_function_check(exercise: str, source: str, timeout_s: int = 600) -> tuple[bool, str]:
    """Run a learner's solution-cell source in a fresh process, then the exercise's function test."""
    payload = json.dumps({"exercise": exercise, "source": source})
    proc = subprocess.run([sys.executable, "-I", "-m", "ftcourse.function_checks"], input=payload,
                          capture_output=True, text=True, timeout=timeout_s, env=grading._clean_env())
    for line in proc.stdout.splitlines():
        if line.startswith(grading.VERDICT_MARK):
            raw = json.loads(line[len(grading.VERDICT_MARK):])
            return raw["passed"], raw["message"]
    tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-8:])
    return False, f"The function check could not run:\n{tail}"


class OutcomeVerdicts(NbGraderPreprocessor):
    """Replace the outputs of configured grade cells with a verdict computed outside the kernel."""

    checks = Dict(help="grade_id -> check spec; see the module docstring").tag(config=True)
    timeout_s = Integer(1200, help="seconds one check may take").tag(config=True)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        # nbgrader builds its preprocessors before it starts the kernel, which inherits this environment:
        # the hidden tests of these exercises skip their in-kernel run, whose outputs would be replaced unread
        outcome = sorted(spec["exercise"] for spec in self.checks.values() if spec.get("kind") == "outcome")
        os.environ[grading.OUTSIDE_KERNEL_ENV] = ",".join(outcome)

    def preprocess(self, nb, resources):
        notebook_dir = Path(resources.get("metadata", {}).get("path") or os.getcwd())
        sources = {c.metadata.get("nbgrader", {}).get("grade_id"): c.source for c in nb.cells}
        for cell in nb.cells:
            grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
            spec = self.checks.get(grade_id)
            if not spec:
                continue
            if spec.get("kind") not in ("outcome", "function"):
                raise ValueError(f"Unknown check kind {spec.get('kind')!r} for grade_id {grade_id!r} in OutcomeVerdicts.checks.")
            try:
                if spec["kind"] == "outcome":
                    verdict = grading.run_grader(spec["exercise"], grading.artifact_dir(spec["exercise"], notebook_dir),
                                                 split="heldout", timeout_s=self.timeout_s)
                    passed, text = verdict.passed, str(verdict)
                else:
                    passed, text = run_function_check(spec["exercise"], sources.get(spec["solution"], ""), self.timeout_s)
            except Exception as exc:  # one submission's failure must not stop the class's grading
                passed, text = False, f"The check could not run: {type(exc).__name__}: {exc}"
            self.log.info("OutcomeVerdicts %s: %s", grade_id, "pass" if passed else "fail")
            cell.outputs = _outputs_for(passed, f"[graded outside the kernel] {text}")
        return nb, resources
