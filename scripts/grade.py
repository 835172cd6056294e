"""Instructor: autograde a folder of submissions, write feedback, export grades, print a table.

    FTCOURSE_SUBMISSIONS=<dir> python scripts/grade.py --assignment 03_sft

<dir> follows nbgrader's layout: <dir>/<student>/<assignment>/<assignment>.ipynb. Autograded copies go to
autograder/autograded, feedback (HTML, hidden tests removed) to autograder/feedback, grades to
autograder/grades.csv. Outcome cells are re-graded outside the learner's kernel (see nbgrader_config.py).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def nbgrader(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run nbgrader with the course configuration (autograder/nbgrader_config.py)."""
    bin_dir = Path(sys.executable).parent
    full_env = {**os.environ, **(env or {})}
    full_env["PATH"] = f"{bin_dir}{os.pathsep}{full_env.get('PATH', '')}"  # alembic must come from the venv
    proc = subprocess.run([str(bin_dir / "nbgrader"), *args], cwd=ROOT / "autograder", env=full_env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"nbgrader {' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return proc


def gradebook_scores(assignment: str, db_path: Path) -> dict[str, dict[str, float]]:
    """{student: {grade_id: score, 'total': score}} from the gradebook."""
    from nbgrader.api import Gradebook

    scores: dict[str, dict[str, float]] = {}
    with Gradebook(f"sqlite:///{db_path}") as gb:
        for submission in gb.assignment_submissions(assignment):
            row = {}
            for nb in submission.notebooks:
                for grade in nb.grades:
                    row[grade.name] = grade.score
                row["total"] = nb.score
                row["max"] = nb.max_score
            scores[submission.student.id] = row
    return scores


def grade(assignment: str, env: dict | None = None) -> dict[str, dict[str, float]]:
    """Release into the gradebook, autograde every submission, write feedback; return the scores."""
    nbgrader("generate_assignment", assignment, "--force", env=env)
    nbgrader("autograde", assignment, "--force", env=env)
    nbgrader("generate_feedback", assignment, "--force", env=env)
    db = Path((env or {}).get("FTCOURSE_GRADEBOOK") or os.environ.get("FTCOURSE_GRADEBOOK") or ROOT / "autograder" / "gradebook.db")
    return gradebook_scores(assignment, db)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--assignment", default="03_sft")
    args = parser.parse_args()
    submissions = Path(os.environ.get("FTCOURSE_SUBMISSIONS", ROOT / "autograder" / "submitted"))
    if not submissions.is_dir() or not any(submissions.glob(f"*/{args.assignment}/*.ipynb")):
        print(f"No submissions found: expected {submissions}/<student>/{args.assignment}/{args.assignment}.ipynb")
        return 2
    scores = grade(args.assignment)
    nbgrader("export", "--to", str(ROOT / "autograder" / "grades.csv"))
    sys.path.insert(0, str(ROOT))
    from ftcourse.plots import table

    columns = sorted({k for row in scores.values() for k in row} - {"total", "max"})
    rows = [{"student": s, **{c: row.get(c) for c in columns}, "total": f"{row['total']:g}/{row['max']:g}"}
            for s, row in sorted(scores.items())]
    print(table(rows, ["student", *columns, "total"]))
    print(f"feedback: {ROOT / 'autograder' / 'feedback'}   grades: {ROOT / 'autograder' / 'grades.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
