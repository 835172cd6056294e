"""Generated files are fresh, and nothing of the solutions or hidden tests reaches course/."""

import subprocess
import sys
from pathlib import Path

import nbformat

from ftcourse.reporting import is_record_cell

ROOT = Path(__file__).resolve().parent.parent
MARKERS = ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS")


def test_generated_notebooks_are_fresh():
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "release.py"), "--check"], capture_output=True,
                          text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_committed_notebooks_have_no_outputs():
    for path in list(ROOT.glob("solutions/*/*.ipynb")) + list(ROOT.glob("course/*/*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, f"{path.name} has outputs"


def test_course_holds_no_solution_and_no_hidden_test():
    course_files = [p for p in (ROOT / "course").rglob("*") if p.is_file()]
    assert course_files, "course/ is empty: run make release"
    assert all(p.suffix == ".ipynb" for p in course_files), [p.name for p in course_files if p.suffix != ".ipynb"]
    for source in ROOT.glob("solutions/*/*.py"):
        released = (ROOT / "course" / source.parent.name / f"{source.stem}.ipynb").read_text()
        for marker in MARKERS:
            assert marker not in released
        text = source.read_text()
        blocks, public = [], text  # public: the source without its solution and hidden-test blocks
        for block in ("BEGIN SOLUTION", "BEGIN HIDDEN TESTS"):
            end = block.replace("BEGIN", "END")
            pos = 0
            while (start := text.find(block, pos)) != -1:
                stop = text.index(end, start)
                blocks.append((block, text[start:stop]))
                public = public.replace(text[start:stop], "")
                pos = stop
        for block, body in blocks:
            for line in body.splitlines()[1:]:
                code = line.strip()
                # a line that the public part of the notebook also has (`with quiet():`) proves nothing
                if len(code) > 12 and not code.startswith("#") and code not in public:
                    assert code not in released, f"{block.split()[1].lower()} line leaked into course/: {code}"


PLUMBING = ("write_results", "shutil.rmtree", "notebook_start")


def test_learner_notebooks_hold_no_plumbing():
    """The course table's record and the emptying of the artifact folder are not the learner's to read: the
    first is the instructor's `course-record` cell, the second happens in `begin_exercise`."""
    for path in sorted(ROOT.glob("course/*/*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            for word in PLUMBING:
                assert word not in cell.source, f"{path.name}: {word!r} in a released cell:\n{cell.source[:300]}"
            assert not is_record_cell(cell), f"{path.name}: a course-record cell released"


def test_each_source_records_its_run_in_one_last_course_record_cell():
    """`make course` and the claims' tests read course_results.json, which the source's one `course-record` cell
    writes; it is the last code cell, so the browser test's copy of the release can run it last too."""
    import jupytext

    for source in sorted(ROOT.glob("solutions/[0-9][0-9]_*/[0-9][0-9]_*.py")):
        code = [c for c in jupytext.read(source).cells if c.cell_type == "code"]
        records = [i for i, c in enumerate(code) if is_record_cell(c)]
        assert records == [len(code) - 1], f"{source.name}: course-record cells at {records} of {len(code)} code cells"
        assert "write_results(" in code[-1].source, source.name
        assert all("write_results(" not in c.source for c in code[:-1]), f"{source.name} writes results elsewhere"
