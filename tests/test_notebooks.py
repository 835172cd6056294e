"""The notebooks as papermill runs them: a `parameters` cell with `PRESET` and `SEED` in every one.

Every solution notebook is executed end to end under papermill, with its preset injected, in the nbgrader
round trip (tests/test_nbgrader_roundtrip.py and, for 03, tests/test_tamper.py), which also checks its
stated outcome, its own hidden tests and the grade the grader gives it.
"""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from release import sources  # noqa: E402

NOTEBOOKS = [source.with_suffix(".ipynb") for source in sources()]
RELEASED = [ROOT / "course" / source.stem / f"{source.stem}.ipynb" for source in sources()]


@pytest.mark.parametrize("notebook", NOTEBOOKS + RELEASED, ids=[f"{p.parts[-3]}/{p.stem}" for p in NOTEBOOKS + RELEASED])
def test_every_notebook_takes_the_preset_as_a_papermill_parameter(notebook):
    import papermill

    parameters = papermill.inspect_notebook(str(notebook))
    assert set(parameters) >= {"PRESET", "SEED"}, (notebook, sorted(parameters))
    assert parameters["PRESET"]["default"] == '"auto"', parameters["PRESET"]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_no_sentence_of_prose_is_repeated(notebook):
    """A paragraph pasted twice (09's "Machine time" was) reads as a slip. Headings, table rows, display formulas and
    code fences may repeat; a sentence of prose (over 60 characters) may not, within a cell or across cells."""
    import re

    import nbformat

    seen = {}
    for index, cell in enumerate(nbformat.read(notebook, as_version=4).cells):
        if cell.cell_type != "markdown":
            continue
        for paragraph in cell.source.split("\n\n"):
            prose = [line for line in paragraph.splitlines() if not line.lstrip().startswith(("#", "|", "$$", "```"))]
            text = " ".join(" ".join(prose).split())
            for sentence in (s.rstrip(".?!:") for s in re.split(r"(?<=[.?!:])\s+", text) if len(s) > 60):
                assert sentence not in seen, f"{notebook.stem}: cells {seen[sentence]} and {index} both say {sentence!r}"
                seen[sentence] = index
