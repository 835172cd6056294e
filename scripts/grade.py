"""Instructor: grade a class folder with nbgrader, write feedback, export grades, print a table that says why.

    export FTCOURSE_HELDOUT_SEED=<your secret integer>
    FTCOURSE_SUBMISSIONS=<dir> python scripts/grade.py --assignment 03_sft      (or: make grade SUBMISSIONS=<dir>)

<dir> follows nbgrader's layout: <dir>/<student>/<assignment>/<assignment>.ipynb. What happens:
1. The secret: refused when unset, or when it is the public test seed (tests opt in explicitly).
2. Isolation, when this runs as root: the unprivileged learner user exists, the course package is installed
   non-editable for grading (.grading/site), learner code reads the model from a copy it cannot write
   (.grading/learner-cache), the instructor's folders and the grader's own caches are closed to it, and a
   check proves the learner user can run Python. As a normal user the same grading runs without privilege separation, and
   this script says so (autograder/README.md: what that does not defend, and the container recipe).
3. Each submission contributes its notebook only: a symbolic link, a file over 20 MB or a file that is not a
   notebook is refused with the reason, and the released notebook is graded in its place (0 points).
4. Each learner is autograded in an nbgrader process of their own, with a time cap: one submission cannot stop
   the class. Feedback (hidden tests removed) is written per learner; grades go to autograder/grades.csv.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
MAX_NOTEBOOK_BYTES = 20_000_000
STUDENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# Closed to the learner user while grading: reference solutions (solutions/, tests/, the history in .git), the
# gradebook and submissions (autograder/), and what `make course` trained (build/). The course package is public.
INSTRUCTOR_FOLDERS = ("solutions", "tests", "autograder", "build", ".git")
# In the grading install: the hash of the source it was built from (`install_for_grading` writes it;
# `preflight` keys its proof on it)
SOURCE_STAMP = ".ftcourse-source-hash"


def grading_dir() -> Path:
    """Where the grader keeps its install and caches: `$FTCOURSE_GRADING_DIR`, else `.grading/` in the course."""
    return Path(os.environ.get("FTCOURSE_GRADING_DIR") or ROOT / ".grading").resolve()


def _tree_hash(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _open_tree(folder: Path) -> None:
    """Folders 755 and files 644: readable by the learner user, writable only by the owner."""
    for dirpath, dirnames, filenames in os.walk(folder):
        os.chmod(dirpath, 0o755)
        for name in filenames:
            os.chmod(Path(dirpath) / name, 0o644)


def install_for_grading(gdir: Path) -> Path:
    """The course package installed non-editable (built as a wheel from a copy of the source) into `gdir/site`."""
    site = gdir / "site"
    stamp = site / SOURCE_STAMP
    wanted = _tree_hash(ROOT / "ftcourse") + hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if stamp.is_file() and stamp.read_text() == wanted and (site / "ftcourse" / "grading" / "grader.py").is_file():
        return site
    shutil.rmtree(site, ignore_errors=True)
    source = gdir / "source"
    shutil.rmtree(source, ignore_errors=True)
    shutil.copytree(ROOT / "ftcourse", source / "ftcourse", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                           "--no-compile", "--target", str(site), str(source)], capture_output=True, text=True,
                          env={**os.environ, "PIP_NO_INDEX": "1"})
    shutil.rmtree(source, ignore_errors=True)
    if proc.returncode != 0:
        raise RuntimeError(f"Could not install the course package for grading:\n{proc.stderr[-3000:]}")
    stamp.write_text(wanted)
    return site


def prepare_learner_cache(gdir: Path) -> Path:
    """A model cache the learner user may read: a verified copy of the converted model (tokenizer and weights)."""
    from ftcourse.models import EMBEDDED_NAME, embedded_model_dir, embedded_model_intact

    cache = gdir / "learner-cache"
    target = cache / EMBEDDED_NAME
    if not embedded_model_intact(target):
        shutil.rmtree(target, ignore_errors=True)
        cache.mkdir(parents=True, exist_ok=True)
        shutil.copytree(embedded_model_dir(verify=True), target)
    return cache


def learner_runtime(gdir: Path | None = None) -> dict:
    """Install the package for grading and the learner-readable cache; the environment that points to both."""
    import fcntl

    gdir = gdir or grading_dir()
    gdir.mkdir(parents=True, exist_ok=True)
    os.chmod(gdir, 0o755)
    # one at a time: two graders (or test workers) share this folder; the lock is the grader's (0600), so learner
    # code cannot hold it
    with os.fdopen(os.open(gdir / ".lock", os.O_RDWR | os.O_CREAT, 0o600), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        site, cache = install_for_grading(gdir), prepare_learner_cache(gdir)
        _open_tree(site)
        _open_tree(cache)
    return {"FTCOURSE_GRADING_SITE": str(site), "FTCOURSE_LEARNER_CACHE": str(cache)}


def _close(path: Path) -> None:
    if path.exists() and not path.is_symlink():
        os.chmod(path, stat.S_IMODE(path.stat().st_mode) & 0o700)


@dataclasses.dataclass
class Setup:
    """Where this grading run keeps things, and whether learner code runs as another user."""

    env: dict
    isolated: bool
    learner_user: str | None
    notes: list


def prepare(paths: dict) -> Setup:
    """Check the secret, install and cache for grading, and (as root) isolate the learner user."""
    from ftcourse.grading import sandbox, secret

    secret.heldout_seed()  # raises MissingSecret with what to do
    verdicts = Path(paths["FTCOURSE_VERDICTS_DIR"])
    verdicts.mkdir(parents=True, exist_ok=True)
    runtime = learner_runtime()
    env = {**runtime, "PYTHONPATH": runtime["FTCOURSE_GRADING_SITE"], **paths}
    identity = sandbox.learner_identity(create=True)
    if identity is None:
        return Setup(env, False, None, [
            f"NOT ISOLATED: grading runs as {os.environ.get('USER', 'this user')}, so learner code runs as that user "
            "too. Verdicts are still computed only by the grader and learner code still runs in capped child "
            "processes, but it can read and write what you can. Grade as root, or in the container of "
            "autograder/README.md, to defend against a hostile submission."])
    from ftcourse.models import cache_root

    closed = [verdicts, cache_root(), *(ROOT / name for name in INSTRUCTOR_FOLDERS),
              *(Path(paths[k]) for k in ("FTCOURSE_SUBMISSIONS", "FTCOURSE_AUTOGRADED", "FTCOURSE_FEEDBACK")),
              Path(paths["FTCOURSE_GRADEBOOK"]).parent]
    for folder in closed:
        if folder.resolve() != ROOT:
            _close(folder)
    notes = preflight(env)
    return Setup(env, True, identity.name, notes)


# What a preflight proved in this process: (learner user and its ids, interpreter, grading install and its source
# hash, learner cache). A second grading run in the same process (the test suite's) checks the paths again but
# starts no second child; an install without its source-hash stamp is never taken as proven.
_PROVEN: set = set()


def preflight(env: dict) -> list:
    """Prove the learner user can run the grader's Python and import the course (or say what blocks it)."""
    from ftcourse.grading import sandbox

    identity = sandbox.learner_identity(create=True)
    if identity is None:
        return []
    needed = sandbox.runtime_paths(site=env["FTCOURSE_GRADING_SITE"], cache=env["FTCOURSE_LEARNER_CACHE"])
    blocked = sandbox.blocked_paths(needed)
    notes = []
    if blocked and os.environ.get("FTCOURSE_GRANT_TRAVERSE") == "1":
        for folder in blocked:
            os.chmod(folder, stat.S_IMODE(folder.stat().st_mode) | stat.S_IXOTH)
        notes.append("granted the learner user passage (o+x, no listing) through " + ", ".join(map(str, blocked)))
        blocked = []
    if blocked:
        raise sandbox.IsolationError(
            f"The learner user {identity.name!r} cannot reach the grader's Python: {', '.join(map(str, blocked))} "
            "lack o+x. Install the course with a system-wide Python (make setup does), or allow passage with "
            "FTCOURSE_GRANT_TRAVERSE=1 (adds o+x only, no listing).")
    writable = [p for p in needed if p.exists() and p.stat().st_mode & stat.S_IWOTH]
    if writable:
        raise sandbox.IsolationError(f"{', '.join(map(str, writable))} can be written by any user: the learner user "
                                     "could rewrite what the grader imports. Remove o+w first.")
    stamp = Path(env["FTCOURSE_GRADING_SITE"]) / SOURCE_STAMP
    source_hash = stamp.read_text() if stamp.is_file() else None
    proof = (identity.name, identity.uid, identity.gid, sys.executable, env["FTCOURSE_GRADING_SITE"],
             env["FTCOURSE_LEARNER_CACHE"], source_hash)
    if source_hash is not None and proof in _PROVEN:
        return notes
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        result = sandbox.run_learner_code(
            {"cells": [["preflight", "import torch, transformers, peft\n"]], "provides": [], "preset": "cpu",
             "seed": 0, "op": "values", "inputs": {"names": []}},
            site=env["FTCOURSE_GRADING_SITE"], cache=env["FTCOURSE_LEARNER_CACHE"])
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    if not result.ok:
        raise sandbox.IsolationError(f"The learner user {identity.name!r} could not run the grader's Python: "
                                     f"{result.error}\n{result.log_tail[-1500:]}")
    _PROVEN.add(proof)
    return notes


# ---------------------------------------------------------------- submissions

def stage(submissions: Path, staging: Path, assignment: str, released: Path) -> dict[str, str]:
    """Copy each learner's notebook (and only it) into `staging`; {student: why refused} for the rest."""
    refused: dict[str, str] = {}
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for entry in sorted(submissions.iterdir()) if submissions.is_dir() else []:
        student = entry.name
        if not STUDENT_ID.match(student) or entry.is_symlink() or not entry.is_dir():
            continue  # not a learner's folder
        notebook = entry / assignment / f"{assignment}.ipynb"
        why = _refuse(notebook)
        target = staging / student / assignment
        target.mkdir(parents=True)
        if why:
            refused[student] = why
            shutil.copyfile(released, target / f"{assignment}.ipynb")
            continue
        shutil.copyfile(notebook, target / f"{assignment}.ipynb")
        stamp = entry / assignment / "timestamp.txt"
        if stamp.is_file() and not stamp.is_symlink() and stamp.stat().st_size < 200:
            shutil.copyfile(stamp, target / "timestamp.txt")
    return refused


def _refuse(notebook: Path) -> str:
    """Why a submitted notebook cannot be graded, or '' when it can."""
    import nbformat

    if notebook.is_symlink():
        return "the notebook is a symbolic link, not a file"
    if not notebook.is_file():
        return f"no notebook {notebook.name} in the submission"
    if notebook.stat().st_size > MAX_NOTEBOOK_BYTES:
        return f"the notebook is {notebook.stat().st_size / 1e6:.0f} MB, over {MAX_NOTEBOOK_BYTES / 1e6:.0f} MB"
    try:
        nbformat.read(notebook, as_version=4)
    except Exception as error:  # anything nbformat cannot read is not a notebook
        return f"not a readable notebook ({type(error).__name__})"
    return ""


def nbgrader(*args: str, env: dict | None = None, timeout_s: float | None = None) -> subprocess.CompletedProcess:
    """Run nbgrader with the course configuration (autograder/nbgrader_config.py)."""
    bin_dir = Path(sys.executable).parent
    full_env = {**os.environ, **(env or {})}
    full_env["PATH"] = f"{bin_dir}{os.pathsep}{full_env.get('PATH', '')}"  # alembic must come from the venv
    proc = subprocess.run([str(bin_dir / "nbgrader"), *args], cwd=ROOT / "autograder", env=full_env,
                          capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0:
        raise RuntimeError(f"nbgrader {' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return proc


def default_paths() -> dict:
    here = ROOT / "autograder"
    return {"FTCOURSE_SUBMISSIONS": os.environ.get("FTCOURSE_SUBMISSIONS", str(here / "submitted")),
            "FTCOURSE_AUTOGRADED": os.environ.get("FTCOURSE_AUTOGRADED", str(here / "autograded")),
            "FTCOURSE_FEEDBACK": os.environ.get("FTCOURSE_FEEDBACK", str(here / "feedback")),
            "FTCOURSE_GRADEBOOK": os.environ.get("FTCOURSE_GRADEBOOK", str(here / "gradebook.db")),
            "FTCOURSE_COURSE_ROOT": os.environ.get("FTCOURSE_COURSE_ROOT", str(ROOT))}


def grade(assignment: str, env: dict | None = None) -> dict[str, dict]:
    """Grade every learner of `assignment`; {student: row} with each grade cell's score, the total and why."""
    paths = {**default_paths(), **(env or {})}
    submissions = Path(paths["FTCOURSE_SUBMISSIONS"])
    staging = Path(paths["FTCOURSE_AUTOGRADED"]).parent / f".staged-{assignment}"
    paths |= {"FTCOURSE_VERDICTS_DIR": str(Path(paths["FTCOURSE_AUTOGRADED"]).parent / f".verdicts-{assignment}")}
    shutil.rmtree(paths["FTCOURSE_VERDICTS_DIR"], ignore_errors=True)
    setup = prepare(paths)
    run_env = {**setup.env, "FTCOURSE_SUBMISSIONS": str(staging)}
    nbgrader("generate_assignment", assignment, "--force", env=run_env)
    released = Path(paths["FTCOURSE_COURSE_ROOT"]) / "course" / assignment / f"{assignment}.ipynb"
    refused = stage(submissions, staging, assignment, released)
    if setup.isolated:
        _close(staging)
    cap = float(os.environ.get("FTCOURSE_SUBMISSION_SECONDS", "3600")) + 600
    students = sorted(p.name for p in staging.iterdir())
    failures = _autograde(assignment, students, run_env, cap, Path(paths["FTCOURSE_AUTOGRADED"]), staging, released)
    rows = _table_rows(assignment, Path(paths["FTCOURSE_GRADEBOOK"]), Path(paths["FTCOURSE_VERDICTS_DIR"]),
                       refused, failures)
    rows["_setup"] = {"isolated": setup.isolated, "learner_user": setup.learner_user, "notes": setup.notes,
                      "env": run_env, "staging": str(staging)}
    return rows


def _autograde(assignment: str, students: list[str], env: dict, cap: float, autograded: Path,
               staging: Path, released: Path) -> dict[str, str]:
    """Autograde and write feedback for the class in one nbgrader run each. A learner whose notebook nbgrader
    cannot process is graded again alone, to learn why, then graded on the released notebook in its place
    (0 points, with feedback). {student: why} for those."""
    failures: dict[str, str] = {}
    start = time.time()

    def done(step: str, student: str) -> bool:
        path = (autograded / student / assignment / f"{assignment}.ipynb" if step == "autograde" else
                Path(env["FTCOURSE_FEEDBACK"]) / student / assignment / f"{assignment}.html")
        return path.is_file() and path.stat().st_mtime >= start

    def alone(args: list[str], student: str) -> str:
        try:
            nbgrader(*args, "--student", student, env=env, timeout_s=cap)
            return ""
        except subprocess.TimeoutExpired:
            return f"{args[0]} ran past {cap:.0f} s"
        except RuntimeError as error:
            lines = [l for l in str(error).strip().splitlines() if l.strip() and "AutogradeApp" not in l]
            return f"{args[0]} failed: " + (lines[-1].strip()[:200] if lines else "see nbgrader's log")

    for step, args in (("autograde", ["autograde", assignment, "--force"]),
                       ("feedback", ["generate_feedback", assignment, "--force"])):
        try:
            nbgrader(*args, env=env, timeout_s=cap * max(1, len(students)))
        except (RuntimeError, subprocess.TimeoutExpired):
            pass  # nbgrader goes on past a failing learner and fails at the end: find out who, below
        for student in students:
            if done(step, student):
                continue
            why = alone(args, student)
            if why and step == "autograde":  # grade the released notebook in its place: 0 points, and feedback
                shutil.copyfile(released, staging / student / assignment / f"{assignment}.ipynb")
                failures[student] = why + "; the released notebook was graded in its place"
                alone(args, student)
            elif why:
                failures.setdefault(student, why)
    return failures


def _table_rows(assignment: str, db: Path, verdicts_dir: Path, refused: dict, failures: dict) -> dict[str, dict]:
    from nbgrader.api import Gradebook

    rows: dict[str, dict] = {}
    with Gradebook(f"sqlite:///{db}") as gb:
        for submission in gb.assignment_submissions(assignment):
            row: dict = {"manual": []}
            for nb in submission.notebooks:
                for g in nb.grades:
                    row[g.name] = g.score
                    if g.manual_score is not None:
                        row["manual"].append(f"{g.name}={g.manual_score:g} (auto {g.auto_score})")
                row["total"], row["max"] = nb.score, nb.max_score
            rows[submission.student.id] = row
    for student, row in rows.items():
        summary_file = verdicts_dir / f"{student}.json"
        summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
        reasons = [f"{grade_id}: {v['reason']}" for grade_id, v in summary.get("verdicts", {}).items() if not v["passed"]]
        why = refused.get(student) or failures.get(student) or summary.get("grader_error", "")[:200]
        row["preset"] = summary.get("preset", "-")
        row["why"] = "; ".join(([f"refused: {why}"] if student in refused else [why] if why else []) + reasons) or "-"
        row["verdicts"] = summary.get("verdicts", {})
        row["seconds"] = round(sum(v.get("metrics", {}).get("grading_seconds", 0) or 0 for v in row["verdicts"].values()), 1)
    return rows


def print_table(rows: dict, assignment: str) -> None:
    from ftcourse.grading.registry import for_notebook
    from ftcourse.plots import table

    setup = rows.get("_setup", {})
    for note in setup.get("notes", []):
        print(note)
    cells = [e.grade_id for e in for_notebook(assignment)]
    students = {s: r for s, r in rows.items() if not s.startswith("_")}
    lines = [{"student": s, **{c: r.get(c) for c in cells}, "total": f"{r.get('total', 0):g}/{r.get('max', 0):g}",
              "preset": r.get("preset"), "grader_s": r.get("seconds", 0), "manual": ", ".join(r.get("manual", [])) or "-",
              "why": r.get("why", "")[:150]} for s, r in sorted(students.items())]
    print(table(lines, ["student", *cells, "total", "preset", "grader_s", "manual", "why"]))
    if any(r.get("manual") for r in students.values()):
        print("note: 'manual' lists manual scores in the gradebook; they replace the grader's score in the total.")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--assignment", default="03_sft")
    args = parser.parse_args()
    from ftcourse.grading import sandbox, secret

    submissions = Path(default_paths()["FTCOURSE_SUBMISSIONS"])
    if not submissions.is_dir() or not any(submissions.glob(f"*/{args.assignment}")):
        print(f"No submissions found: expected {submissions}/<student>/{args.assignment}/{args.assignment}.ipynb")
        return 2
    try:
        rows = grade(args.assignment)
    except (secret.MissingSecret, sandbox.IsolationError) as error:
        print(f"make grade refused: {error}")
        return 2
    nbgrader("export", "--to", str(ROOT / "autograder" / "grades.csv"), env=rows["_setup"]["env"])
    print_table(rows, args.assignment)
    print(f"feedback: {default_paths()['FTCOURSE_FEEDBACK']}   grades: {ROOT / 'autograder' / 'grades.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
