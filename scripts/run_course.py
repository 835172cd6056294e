"""`make course`: execute every solution notebook headless with papermill and print a table.

Executed copies go to build/executed/; each notebook runs in its own folder build/run/NN_slug/ (its
artifacts land there). Columns: notebook, minutes (the solution notebook, hidden tests included), learner minutes
(the same run less the cells a learner's copy does not have), base and tuned metric on the held-out split (the
solution notebook's hidden test, run by the grader in its own process on the notebook's adapter), and
the exercise score the executed notebook earns. The held-out split is the public test seed's: `make
course` opts in to it explicitly (a class is graded with the instructor's own secret, by `make grade`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))


def score_notebook(path: Path) -> tuple[float, float]:
    """Points earned and available in an executed notebook, as nbgrader scores its grade cells."""
    import nbformat
    from nbgrader.utils import determine_grade, is_grade, is_solution

    nb = nbformat.read(path, as_version=4)
    earned = total = 0.0
    for cell in nb.cells:
        if is_grade(cell) and not is_solution(cell):
            score, points = determine_grade(cell)
            earned += score or 0.0
            total += points
    return earned, total


def execute(notebook: Path, preset: str, workdir: Path, executed: Path) -> tuple[float, str]:
    """Run one notebook with papermill in `workdir`, its preset injected; (minutes, the first error or '')."""
    import papermill

    workdir.mkdir(parents=True, exist_ok=True)
    executed.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    error = ""
    try:
        papermill.execute_notebook(str(notebook), str(executed), parameters={"PRESET": preset}, cwd=str(workdir),
                                   progress_bar=False, log_output=False, kernel_name="python3")
    except Exception as exc:  # papermill raises on the first failing cell; keep going, report it
        error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
    return (time.perf_counter() - start) / 60, error


def run_notebook(notebook: Path, preset: str) -> dict:
    """Execute one notebook with papermill; return its row of the table."""
    slug = notebook.stem
    workdir = ROOT / "build" / "run" / slug
    executed = ROOT / "build" / "executed" / f"{slug}.ipynb"
    minutes, error = execute(notebook, preset, workdir, executed)
    row = {"notebook": slug, "minutes": minutes, "error": error}
    results_file = workdir / "course_results.json"
    if results_file.exists():
        row.update(json.loads(results_file.read_text()))
    from ftcourse.grading import artifact_dir
    from ftcourse.grading.kernel import HELDOUT_VERDICT

    verdict_file = artifact_dir(slug, workdir) / HELDOUT_VERDICT
    if verdict_file.is_file():  # the hidden test's held-out verdict, written by the grader process
        row.update(heldout_columns(json.loads(verdict_file.read_text())))
    row["learner_minutes"] = minutes - instructor_only_minutes(executed)
    earned, total = score_notebook(executed)
    row["score"] = f"{earned:g}/{total:g}"
    return row


def instructor_only_minutes(executed: Path) -> float:
    """Minutes the executed solution spent in cells a learner's copy does not have: the hidden tests (the grader on
    the held-out split) and the `course-record` cell. `minutes` less these is the learner's run of the release."""
    import nbformat

    from ftcourse.reporting import is_record_cell

    if not executed.is_file():
        return 0.0
    nb = nbformat.read(executed, as_version=4)
    seconds = sum(cell.metadata.get("papermill", {}).get("duration") or 0.0 for cell in nb.cells
                  if cell.cell_type == "code" and ("BEGIN HIDDEN TESTS" in cell.source or is_record_cell(cell)))
    return seconds / 60


def heldout_columns(verdict: dict) -> dict:
    """The table's held-out columns from a grader verdict: the measure whose gain the grader checks (exact match on
    the task; 07: the judge's score, though its verdict also reports the share right; 08: the checker's share right;
    10: MRR@10; 09: the student against the same student without the teacher; 06: the reward model's worst graded
    pairwise accuracy, with no base), and the probe's accuracy."""
    metrics, checks = verdict["metrics"], verdict.get("checks", [])
    graded = [check[0][:-len("_gain")] for check in checks if check[0].endswith("_gain")]
    accuracies = [metrics[check[0]] for check in checks if check[0].endswith("_accuracy") and check[0] in metrics]
    measure = {"mrr": "mrr@10"}.get(graded[0], graded[0]) if graded else "judge"
    return {"heldout_base": metrics.get("base_exact_match", metrics.get("labels_only_exact_match",
                                                                        metrics.get(f"base_{measure}"))),
            "heldout_tuned": metrics.get("exact_match", metrics.get(measure, min(accuracies, default=None))),
            "probe_base": metrics.get("base_probe_accuracy"), "probe_tuned": metrics.get("probe_accuracy")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default=os.environ.get("PRESET", "cpu"))
    parser.add_argument("notebooks", nargs="*", help="slugs to run (default: all)")
    args = parser.parse_args()
    from ftcourse.grading.secret import public_test_env
    from ftcourse.plots import table

    os.environ.update(public_test_env())  # the solution notebooks' hidden tests grade on the public test seed
    from release import sources

    notebooks = [s.with_suffix(".ipynb") for s in sources() if not args.notebooks or s.stem in args.notebooks]
    rows = []
    for nb in notebooks:
        print(f"== {nb.stem} (preset {args.preset})", flush=True)
        rows.append(run_notebook(nb, args.preset))
        print(table([rows[-1]], ["notebook", "minutes", "learner_minutes", "heldout_base", "heldout_tuned", "probe_base",
                                 "probe_tuned", "score"]), flush=True)
    print("\n" + table(rows, ["notebook", "minutes", "learner_minutes", "metric", "heldout_base", "heldout_tuned",
                              "probe_base", "probe_tuned", "score"]))
    (ROOT / "build" / "course_table.json").write_text(json.dumps(rows, indent=2))
    failed = [r["notebook"] + ": " + r["error"] for r in rows if r["error"]]
    for line in failed:
        print("FAILED", line)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
