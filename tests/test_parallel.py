"""`make test` runs in two processes (pytest-xdist, tests/conftest.py): each worker on its share of the cores with a
learner user of its own, and every test that shares a notebook's execution in that notebook's group."""

import os

import pytest
from conftest import HEAVY_GROUPS, UNIT_GROUPS, WORKER_THREADS, worker_group

from ftcourse.grading import registry


def test_the_tests_that_share_a_notebooks_execution_share_its_group():
    for slug in registry.notebooks():
        for test in ("test_reference_earns_full_marks_and_untouched_zero", "test_no_warning_reaches_a_cell_output"):
            assert worker_group(f"tests/test_nbgrader_roundtrip.py::{test}[{slug}]") == slug
        assert worker_group(f"tests/test_browser.py::test_labs_in_a_real_browser[{slug}]") == slug  # a lab's execution
    assert worker_group("tests/test_tamper.py::test_the_untouched_release_earns_zero_after_every_attack") == "03_sft"
    assert worker_group("tests/test_tamper.py::test_each_attack[huge_output]") == "03_sft"  # grades 03's execution
    assert worker_group("tests/test_grpo.py::test_x[a-b]") == "test_grpo"  # a module: its fixtures run once
    assert worker_group("tests/test_browser.py::test_lab_notebooks_are_found") == "test_browser"
    assert worker_group("tests/test_browser.py::test_labs_in_a_real_browser[04_lora-x]") == "test_browser"  # no slug
    pytest.importorskip("xdist")
    from conftest import NotebookScheduling

    assert NotebookScheduling._split_scope(None, "tests/test_tamper.py::test_y") == "03_sft"  # what xdist calls
    assert sorted(HEAVY_GROUPS) == sorted(registry.notebooks())  # every notebook scheduled among the long groups
    here = os.path.dirname(__file__)  # a renamed module would fall silently to the end of the queue
    assert not [m for m in UNIT_GROUPS if not os.path.isfile(f"{here}/{m}.py")], "UNIT_GROUPS names a missing module"
    assert len(set(UNIT_GROUPS)) == len(UNIT_GROUPS), "a module named twice in UNIT_GROUPS"
    shared = {"test_tamper", "test_browser", "test_nbgrader_roundtrip"}  # their heavy tests go to a notebook's group
    assert not shared & set(UNIT_GROUPS), "a module whose heavy tests belong to a notebook's group"


def test_a_worker_runs_on_its_share_of_the_cores_as_its_own_learner_user():
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if not worker:
        pytest.skip("one process (TEST_WORKERS=0): `make test` runs the tests in workers")
    import torch

    if WORKER_THREADS is not None:  # else OMP_NUM_THREADS was given, and torch follows it
        workers = int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
        assert WORKER_THREADS == max(1, len(os.sched_getaffinity(0)) // workers)
    assert torch.get_num_threads() == int(os.environ["OMP_NUM_THREADS"])
    assert os.environ["FTCOURSE_LEARNER_USER"].endswith(f"-{worker}")
