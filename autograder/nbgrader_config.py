"""nbgrader configuration of the course (instructor side).

Source notebooks are `solutions/NN_slug/NN_slug.ipynb`, releases go to `course/`. Paths can be
redirected with environment variables so tests and `make grade` can work on other folders:
FTCOURSE_COURSE_ROOT, FTCOURSE_SUBMISSIONS, FTCOURSE_AUTOGRADED, FTCOURSE_FEEDBACK, FTCOURSE_GRADEBOOK.
Run it through `make grade` (scripts/grade.py): it checks the secret, sets up the isolation, stages each
submission's notebook alone and grades each learner in a process of their own.
"""

import os
from pathlib import Path

from ftcourse.reporting import RECORD_TAG

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

# The release drops the instructor's `course-record` cell (the course table's record of a run, read by `make
# course` and the tests of the notebooks' stated claims): the learner's copy holds no such plumbing.
c.GenerateAssignment.preprocessors = [
    "nbconvert.preprocessors.TagRemovePreprocessor",
    "nbgrader.preprocessors.IncludeHeaderFooter",
    "nbgrader.preprocessors.InstantiateTests",
    "nbgrader.preprocessors.LockCells",
    "nbgrader.preprocessors.ClearSolutions",
    "nbgrader.preprocessors.ClearOutput",
    "nbgrader.preprocessors.CheckCellMetadata",
    "nbgrader.preprocessors.ComputeChecksums",
    "nbgrader.preprocessors.SaveCells",
    "nbgrader.preprocessors.ClearHiddenTests",
    "nbgrader.preprocessors.ClearMarkScheme",
    "nbgrader.preprocessors.ComputeChecksums",
    "nbgrader.preprocessors.CheckCellMetadata",
]  # nbgrader 0.9's default list, TagRemovePreprocessor first
c.TagRemovePreprocessor.enabled = True
c.TagRemovePreprocessor.remove_cell_tags = {RECORD_TAG}

c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
c.ClearSolutions.text_stub = "YOUR ANSWER HERE"

# `nbgrader validate` executes notebooks (autograde does not): cells may take minutes on a CPU.
c.Execute.timeout = 900
c.Execute.interrupt_on_timeout = True

# A deleted or edited grade cell is restored from the gradebook.
c.OverwriteCells.add_missing_cells = True

# Autograde does not execute the learner's notebook: no `Execute` step. Every graded cell's output is the
# verdict of the course's grader process (ftcourse.grading), which reads the solution cells' sources, runs them
# in child processes that return data only (as an unprivileged user when grading runs as root), trains the
# outcome exercises itself from the learner's choices and evaluates what it trained on held-out data. The
# exercises, their points and thresholds come from ftcourse/grading/registry.py.
c.Autograde.autograde_preprocessors = [
    "nbgrader.preprocessors.IgnorePattern",
    "nbconvert.preprocessors.ClearMetadataPreprocessor",
    "nbgrader.preprocessors.LimitOutput",
    "ftcourse.grading.preprocessor.GraderVerdicts",
    "nbgrader.preprocessors.SaveAutoGrades",
    "nbgrader.preprocessors.AssignLatePenalties",
    "nbgrader.preprocessors.CheckCellMetadata",
]
c.GraderVerdicts.timeout_s = int(os.environ.get("FTCOURSE_SUBMISSION_SECONDS", "3600"))

# Feedback shows results, not the hidden tests' code.
c.GenerateFeedback.preprocessors = [
    "nbgrader.preprocessors.GetGrades",
    "nbgrader.preprocessors.ClearHiddenTests",
    "nbconvert.preprocessors.CSSHTMLHeaderPreprocessor",
]
