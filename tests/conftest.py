"""Shared fixtures: the embedded model loads once per test session (0.2 s after the first conversion)."""

import os
import warnings

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore")


@pytest.fixture(scope="session")
def model_and_tokenizer():
    from ftcourse.models import load_model_and_tokenizer

    return load_model_and_tokenizer()


@pytest.fixture(scope="session")
def tokenizer(model_and_tokenizer):
    return model_and_tokenizer[1]


def solution_cell(slug: str, grade_id: str) -> dict:
    """Execute a notebook's solution cell (from its jupytext source) on its own; return its namespace.

    This is how the graders run a learner's cell, so the reference solution is tested the same way.
    """
    from pathlib import Path

    import jupytext

    source = Path(__file__).resolve().parent.parent / "solutions" / slug / f"{slug}.py"
    cell = next(c for c in jupytext.read(source).cells
                if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id)
    namespace: dict = {"__name__": "__solution__"}
    exec(compile(cell.source, f"<{slug}:{grade_id}>", "exec"), namespace)
    return namespace


def check_stated_outcome(results: dict, slug: str) -> None:
    """The outcome every notebook states in its course_results.json: a task the base model fails, fixed."""
    assert results["notebook"] == slug, results
    assert results["base_metric"] <= 0.2, results  # the task is one the base model fails ...
    assert results["tuned_metric"] >= results["base_metric"] + 0.4, results  # ... and the fine-tune fixes it
