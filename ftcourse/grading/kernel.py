"""What a notebook's kernel calls: the exercise's spec, the learner's self-check, the solution's hidden tests.

Nothing here decides a grade. `self_check` runs the grader process on the kernel's own artifacts and the
public validation split. The hidden tests of the solution notebooks (the instructor's run, `make course`)
call `assert_outcome` and `check_in_kernel`, which need the instructor's secret; released notebooks do
not contain them, and under nbgrader's autograde the grade comes from the grader process alone.
"""

from __future__ import annotations

import json
from pathlib import Path

from .artifacts import ARTIFACTS_DIRNAME, artifact_dir
from .grader import evaluate_artifacts
from .registry import exercise, outcome_exercise
from .verdict import Verdict

HELDOUT_VERDICT = "heldout_verdict.json"


def describe(grade_id: str, preset) -> str:
    """The exercise's points, thresholds on this preset and what the grader defines before running your cell."""
    ex = exercise(grade_id)
    lines = [f"Exercise {ex.number} ({ex.points} points), graded on preset {preset.name!r}:"]
    for name, (cmp, value) in ex.threshold_values(preset).items():
        lines.append(f"  {name} {cmp} {value:g}" if isinstance(value, (int, float)) else f"  {name} {cmp} {value}")
    if ex.kind == "outcome":
        lines.append(f"The grader runs your cell{'s' if len(ex.solutions) > 1 else ''} "
                     f"({', '.join(ex.solutions)}) on its own, in a fresh process"
                     + (f", with only {', '.join(ex.provides)} defined" if ex.provides else "")
                     + "; it then trains your choices itself and evaluates them on held-out data.")
    else:
        lines.append(f"The grader runs your cell ({', '.join(ex.solutions)}) on its own, in a fresh process: "
                     "keep its imports in it.")
    return "\n".join(lines)


def print_exercise(grade_id: str, preset) -> None:
    """Print `describe(...)`: every notebook prints its thresholds from the registry, not from a copy."""
    print(describe(grade_id, preset))


def begin_exercise(grade_id: str, preset, root: str | Path | None = None, show_spec: bool = True) -> None:
    """Start an exercise: print `describe(...)` (unless `show_spec` is False, where a cell above printed it); for an
    outcome exercise also empty the folder its run saves to (`artifact_dir`), so that the self-check reads what the
    next training run saves and never an earlier run's files, should that run fail before it saves."""
    import shutil

    if show_spec:
        print(describe(grade_id, preset))
    ex = exercise(grade_id)
    if ex.kind != "outcome":
        return
    shutil.rmtree(artifact_dir(ex.notebook, root), ignore_errors=True)
    print(f"Emptied {ARTIFACTS_DIRNAME}/{ex.notebook}/, where this exercise's training saves: the self-check reads "
          "only what the next training run saves (re-running this cell after training means training again).")


def check_recipe(grade_id: str, preset, **configs) -> dict | None:
    """The grader's checks of a recipe exercise's configs, run before training: a field it would refuse is named now.

    `configs`: `lora_config`, `sft_config` (and `bnb_config` for QLoRA), as the solution cell built them; for
    Exercise 10.2 `training_args`, `negatives`, `relative_margin` and `loss_scale`; for Exercise 9.2 `sft_config`,
    `training_data`, `temperature` and `alpha` (for these two the checked choices are returned).
    """
    from ..training import RecipeError, checked_recipe

    if "training_data" in configs:  # 9.2: a student's full fine-tune, no adapter
        from ..distill import distillation_choices

        budget = exercise(grade_id).step_budget(preset)
        try:
            chosen = distillation_choices(configs.get("sft_config"), configs.get("training_data"),
                                          configs.get("temperature"), configs.get("alpha"), preset, budget)
        except RecipeError as error:
            raise ValueError(f"The grader would not train these choices: {error}") from None
        print(f"The grader accepts these choices (step budget {budget}).")
        return chosen

    if "training_args" in configs:  # 10.2: an embedding fine-tune, budgeted in texts
        from ..retrieval import embedding_choices

        budget = exercise(grade_id).threshold_values(preset)["texts"][1]
        try:
            chosen = embedding_choices(configs["training_args"], configs.get("negatives"), configs.get("relative_margin"),
                                       configs.get("loss_scale"), preset, budget)
        except RecipeError as error:
            raise ValueError(f"The grader would not train these choices: {error}") from None
        print(f"The grader accepts these choices ({chosen['texts']} texts of a budget of {budget}).")
        return chosen
    budget = exercise(grade_id).step_budget(preset)
    try:
        checked_recipe(configs, preset, budget)
    except RecipeError as error:
        raise ValueError(f"The grader would not train these configs: {error}") from None
    print(f"The grader accepts these configs ({', '.join(configs)}; step budget {budget}).")


def self_check(notebook: str, preset, root: str | Path | None = None) -> Verdict:
    """The learner's visible check: the grader, in its own process, on the public validation split."""
    verdict = evaluate_artifacts(notebook, artifact_dir(notebook, root), "validation", preset.name)
    print(verdict)
    return verdict


def assert_outcome(notebook: str, preset, root: str | Path | None = None) -> Verdict:
    """The solution notebook's hidden test: the kernel's artifacts on the held-out split (needs the secret).

    The verdict is also written beside the artifacts (`heldout_verdict.json`) for `make course`'s table.
    """
    folder = artifact_dir(notebook, root)
    verdict = evaluate_artifacts(notebook, folder, "heldout", preset.name)
    if folder.is_dir():
        (folder / HELDOUT_VERDICT).write_text(verdict.to_json())
    if not verdict.passed:
        raise AssertionError(str(verdict))
    print(verdict)
    return verdict


def check_in_kernel(grade_id: str, preset, namespace: dict) -> Verdict:
    """The solution notebook's hidden test of a function exercise: the grader's inputs and comparison, with the
    function called in this kernel (the instructor's own reference; learners' code is graded in a child)."""
    from . import secret as secrets_
    from .checks import CHECKS, run_check
    from .child import OPS

    ex = exercise(grade_id)
    if ex.kind != "function":
        raise ValueError(f"{grade_id!r} is an outcome exercise; use assert_outcome.")
    # the same JSON round trip as a child's answer, so the comparison sees exactly what a child would send
    verdict = run_check(ex, preset, secrets_.heldout_seed(),
                        lambda op, inputs, secret_inputs: json.loads(json.dumps(OPS[op](namespace, inputs))))
    if not verdict.passed:
        raise AssertionError(str(verdict))
    print(verdict)
    return verdict


__all__ = ["artifact_dir", "assert_outcome", "begin_exercise", "check_in_kernel", "check_recipe", "describe",
           "outcome_exercise", "print_exercise", "self_check"]
