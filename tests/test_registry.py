"""The exercise registry is the one owner of grade ids, points, solution cells and thresholds: the notebooks'
grade cells, both READMEs' points tables, the nbgrader configuration and the grader all agree with it."""

import re
from pathlib import Path

import jupytext
import pytest

from ftcourse.grading import registry
from ftcourse.grading.checks import CHECKS
from ftcourse.grading.context import PROVIDERS
from ftcourse.grading.evaluate import EVALUATORS
from ftcourse.grading.produce import PRODUCERS

ROOT = Path(__file__).resolve().parent.parent


def _cells(slug):
    return [c for c in jupytext.read(ROOT / "solutions" / slug / f"{slug}.py").cells if c.metadata.get("nbgrader")]


@pytest.mark.parametrize("slug", registry.notebooks())
def test_grade_cells_points_and_solution_cells_agree_with_the_registry(slug):
    cells = _cells(slug)
    graded = [(c.metadata["nbgrader"]["grade_id"], c.metadata["nbgrader"]["points"]) for c in cells
              if c.metadata["nbgrader"].get("grade")]
    assert graded == [(e.grade_id, e.points) for e in registry.for_notebook(slug)]
    solutions = {c.metadata["nbgrader"]["grade_id"] for c in cells if c.metadata["nbgrader"].get("solution")}
    for exercise in registry.for_notebook(slug):
        assert set(exercise.solutions) <= solutions, (exercise.grade_id, exercise.solutions)
        assert set(exercise.provides) <= set(PROVIDERS), exercise.provides


@pytest.mark.parametrize("slug", registry.notebooks())
def test_exercise_headings_carry_the_registrys_number_and_points(slug):
    text = (ROOT / "solutions" / slug / f"{slug}.py").read_text()
    headings = re.findall(r"### Exercise (\d+\.\d+) — .*?\((\d+) points\)", text)
    assert headings == [(e.number, str(e.points)) for e in registry.for_notebook(slug)]


def test_every_exercise_has_its_grader():
    for exercise in registry.EXERCISES:
        assert exercise.kind in registry.KINDS
        if exercise.kind == "function":
            assert exercise.grade_id in CHECKS
        else:
            assert exercise.notebook in PRODUCERS and exercise.notebook in EVALUATORS
    assert set(CHECKS) == {e.grade_id for e in registry.EXERCISES if e.kind == "function"}


@pytest.mark.parametrize("readme", ["README.md", "autograder/README.md"])
def test_both_readmes_carry_the_registrys_points_table(readme):
    assert registry.points_table() in (ROOT / readme).read_text(), \
        f"{readme}: paste ftcourse.grading.registry.points_table() in place of its points table"


def test_autograde_runs_no_learner_kernel_and_writes_the_graders_verdicts():
    config = (ROOT / "autograder" / "nbgrader_config.py").read_text()
    block = config[config.index("c.Autograde.autograde_preprocessors"):]
    block = block[:block.index("]")]
    assert "ftcourse.grading.preprocessor.GraderVerdicts" in block
    assert "Execute" not in block


# The grading subpackage's modules, each allowed to import only those before it (no import running back up).
GRADING_LAYERS = ["registry", "secret", "verdict", "artifacts", "sandbox", "learner", "references", "context", "child",
                  "checks", "evaluate", "produce", "grader", "kernel", "preprocessor"]


def test_grading_modules_import_only_downwards():
    import ast

    folder = ROOT / "ftcourse" / "grading"
    assert {p.stem for p in folder.glob("*.py")} - {"__init__"} == set(GRADING_LAYERS)
    for position, name in enumerate(GRADING_LAYERS):
        tree = ast.parse((folder / f"{name}.py").read_text())
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                imported |= {node.module} if node.module else {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ftcourse.grading."):
                imported.add(node.module.split(".")[2])
        upward = {m.split(".")[0] for m in imported} - set(GRADING_LAYERS[:position])
        assert not upward, f"grading/{name}.py imports {sorted(upward)}, which come after it"


@pytest.mark.parametrize("slug", registry.notebooks())
def test_each_notebook_states_the_learners_study_time(slug):
    """The introduction's study time is `study_time` of the released notebook: the exercises' estimates exactly,
    the reading time within one rounding step (an edit of a few lines may move the computed value by 5 min)."""
    import nbformat

    from ftcourse.grading.registry import study_time, study_time_sentence

    cells = nbformat.read(ROOT / "course" / slug / f"{slug}.ipynb", as_version=4).cells
    stated = " ".join(cells[0].source.split())
    sentence = study_time_sentence(slug, cells)
    found = re.search(r"\*\*Study time:\*\* about (?:(\d+) h )?(\d+) min: reading about (\d+) min .*? the (\d+) exercises "
                      r"about (\d+) min", stated)
    assert found, f"{slug}'s introduction should state (then `make release`):\n{sentence}"
    hours, minutes, reading, n, exercises = (int(g or 0) for g in found.groups())
    t = study_time(slug, cells)
    assert (n, exercises) == (t["n_exercises"], t["exercises"]), f"{slug}: state\n{sentence}"
    assert abs(reading - t["reading"]) <= 5 and 60 * hours + minutes == reading + exercises, f"{slug}: state\n{sentence}"


def test_readme_notebooks_table_gives_each_notebooks_study_time():
    """The README's column repeats what each notebook states."""
    import nbformat

    readme = (ROOT / "README.md").read_text()
    for slug in registry.notebooks():
        intro = " ".join(nbformat.read(ROOT / "course" / slug / f"{slug}.ipynb", as_version=4).cells[0].source.split())
        hours, minutes = re.search(r"\*\*Study time:\*\* about (?:(\d+) h )?(\d+) min", intro).groups()
        row = next(line for line in readme.splitlines() if line.startswith(f"| {slug[:2]} | "))
        expected = f" | {hours} h {int(minutes):02d} | " if hours else f" | {minutes} min | "
        assert expected in row, (slug, expected, row[-60:])
