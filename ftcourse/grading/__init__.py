"""Grading that a submission cannot cheat: the grader computes every number that decides a grade.

One job per module, no import running back up:
- `registry`: every exercise (grade_id, kind, points, solution cells, thresholds, hints): the one owner;
- `secret`: the instructor's held-out seed and the seeds and signatures derived from it;
- `verdict`: a verdict and how metrics are judged against thresholds;
- `kernel`: what a notebook's kernel calls (the printed spec, the self-check, the solution's hidden tests);
- `grader`: the grader process, the only place a verdict is computed, and how it is started;
- `checks`: function exercises, the grader's side (inputs, answer keys, comparison with the library);
- `produce`: outcome exercises trained by the grader from the learner's choices;
- `evaluate`: the metrics of a trained adapter on a split;
- `learner`, `sandbox`, `child`, `context`: running learner code in its own process, returning only data;
- `artifacts`: where an exercise saves, and reading it defensively;
- `references`: the base model's scores, cached and signed;
- `preprocessor`: the nbgrader step that writes the grader's verdicts into the graded cells.
"""

from .artifacts import artifact_dir
from .kernel import assert_outcome, begin_exercise, check_in_kernel, check_recipe, describe, print_exercise, self_check
from .registry import EXERCISES, exercise, outcome_exercise
from .verdict import Verdict

__all__ = ["EXERCISES", "Verdict", "artifact_dir", "assert_outcome", "begin_exercise", "check_in_kernel",
           "check_recipe", "describe", "exercise", "outcome_exercise", "print_exercise", "self_check"]
