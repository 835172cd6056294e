"""Regenerate every notebook from its one source: jupytext .py -> instructor .ipynb -> nbgrader release.

    python scripts/release.py            # write solutions/NN/NN.ipynb and course/NN/NN.ipynb
    python scripts/release.py --check    # exit 1 if any generated file is stale (used by the tests)
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import jupytext
import nbformat

ROOT = Path(__file__).resolve().parent.parent


def sources() -> list[Path]:
    """Every notebook source: solutions/NN_slug/NN_slug.py."""
    return sorted(p for p in (ROOT / "solutions").glob("[0-9][0-9]_*/*.py") if p.stem == p.parent.name)


def instructor_notebook(source: Path) -> str:
    """The instructor notebook's bytes, generated from the source: no outputs, stable metadata."""
    nb = jupytext.read(source)
    nb.metadata.pop("jupytext", None)
    nb.metadata["kernelspec"] = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
    nb.metadata["language_info"] = {"name": "python"}
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"{source.stem}-{i:03d}"  # stable ids: same input, same bytes
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    return nbformat.writes(nb) + "\n"


def release_notebooks(instructor: dict[str, str], out_root: Path) -> dict[str, str]:
    """Run nbgrader generate_assignment on instructor notebooks in a scratch course; return released bytes (the
    course's nbgrader configuration drops the `course-record` cell)."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for slug, text in instructor.items():
            (tmp / "solutions" / slug).mkdir(parents=True)
            (tmp / "solutions" / slug / f"{slug}.ipynb").write_text(text)
        env = {**os.environ, "FTCOURSE_COURSE_ROOT": str(tmp), "FTCOURSE_GRADEBOOK": str(tmp / "gradebook.db"),
               "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        released = {}
        for slug in instructor:
            proc = subprocess.run([str(Path(sys.executable).parent / "nbgrader"), "generate_assignment", slug, "--force"],
                                  cwd=ROOT / "autograder", env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"nbgrader generate_assignment {slug} failed:\n{proc.stderr[-3000:]}")
            released[slug] = (tmp / "course" / slug / f"{slug}.ipynb").read_text()
        return released


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="only report stale files")
    args = parser.parse_args()
    instructor = {src.stem: instructor_notebook(src) for src in sources()}
    released = release_notebooks(instructor, ROOT / "course")
    stale = []
    for slug in instructor:
        targets = {ROOT / "solutions" / slug / f"{slug}.ipynb": instructor[slug],
                   ROOT / "course" / slug / f"{slug}.ipynb": released[slug]}
        for path, text in targets.items():
            if not path.exists() or path.read_text() != text:
                stale.append(path.relative_to(ROOT))
                if not args.check:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text(text)
    if args.check:
        for path in stale:
            print(f"stale: {path} (run `make release`)")
        return 1 if stale else 0
    print(f"{len(instructor)} notebook(s) generated; {len(stale)} file(s) changed.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
