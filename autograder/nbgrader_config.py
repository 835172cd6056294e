"""nbgrader configuration of the course (instructor side).

Source notebooks are `solutions/NN_slug/NN_slug.ipynb`, releases go to `course/`. Paths can be
redirected with environment variables so tests and `make grade` can work on other folders:
FTCOURSE_COURSE_ROOT, FTCOURSE_SUBMISSIONS, FTCOURSE_AUTOGRADED, FTCOURSE_FEEDBACK, FTCOURSE_GRADEBOOK.
"""

import os
from pathlib import Path

c = get_config()  # noqa: F821  (provided by nbgrader when it loads this file)

HERE = Path(__file__).resolve().parent
ROOT = Path(os.environ.get("FTCOURSE_COURSE_ROOT", HERE.parent)).resolve()

c.CourseDirectory.root = str(ROOT)
c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "course"
c.CourseDirectory.submitted_directory = os.environ.get("FTCOURSE_SUBMISSIONS", str(HERE / "submitted"))
c.CourseDirectory.autograded_directory = os.environ.get("FTCOURSE_AUTOGRADED", str(HERE / "autograded"))
c.CourseDirectory.feedback_directory = os.environ.get("FTCOURSE_FEEDBACK", str(HERE / "feedback"))
c.CourseDirectory.db_url = "sqlite:///" + os.environ.get("FTCOURSE_GRADEBOOK", str(HERE / "gradebook.db"))
# The jupytext source (.py) holds the solutions: it must never be copied into a release.
c.CourseDirectory.ignore = [".ipynb_checkpoints", "*.pyc", "__pycache__", "feedback", "*.py", "artifacts", "build",
                            "course_results.json"]

c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
c.ClearSolutions.text_stub = "YOUR ANSWER HERE"

# Exercises train real models: cells may take minutes on a CPU.
c.Execute.timeout = 900
c.Execute.interrupt_on_timeout = True

# A deleted or edited grade cell is restored from the gradebook.
c.OverwriteCells.add_missing_cells = True

# Outcome cells are decided outside the learner's kernel, after execution and before scores are saved.
c.Autograde.autograde_preprocessors = [
    "nbgrader.preprocessors.Execute",
    "nbgrader.preprocessors.IgnorePattern",
    "nbconvert.preprocessors.ClearMetadataPreprocessor",
    "nbgrader.preprocessors.LimitOutput",
    "ftcourse.nbgrader_outcome.OutcomeVerdicts",
    "nbgrader.preprocessors.SaveAutoGrades",
    "nbgrader.preprocessors.AssignLatePenalties",
    "nbgrader.preprocessors.CheckCellMetadata",
]
# Keyed by grade_id, kept here on the instructor side; never read from a submission.
c.OutcomeVerdicts.checks = {
    "decision_rules_tests": {"kind": "function", "exercise": "01_decision", "solution": "decision_rules"},
    "plan_final_outcome": {"kind": "outcome", "exercise": "01_when_to_fine_tune"},
    "cleaning_tests": {"kind": "function", "exercise": "02_cleaning", "solution": "cleaning_pipeline"},
    "cleaned_final_outcome": {"kind": "outcome", "exercise": "02_data_and_tooling"},
    "sft_label_mask_tests": {"kind": "function", "exercise": "03_label_mask", "solution": "sft_label_mask"},
    "sft_final_outcome": {"kind": "outcome", "exercise": "03_sft"},
    "lora_layer_tests": {"kind": "function", "exercise": "04_lora_layer", "solution": "lora_layer"},
    "capstone_final_outcome": {"kind": "outcome", "exercise": "04_lora"},
    "nf4_tests": {"kind": "function", "exercise": "05_nf4", "solution": "nf4_functions"},
    "qlora_final_outcome": {"kind": "outcome", "exercise": "05_quantization_qlora"},
}

# Feedback shows results, not the hidden tests' code.
c.GenerateFeedback.preprocessors = [
    "nbgrader.preprocessors.GetGrades",
    "nbgrader.preprocessors.ClearHiddenTests",
    "nbconvert.preprocessors.CSSHTMLHeaderPreprocessor",
]
