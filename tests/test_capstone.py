"""The capstone's task drawing, overlap detection and saved artifacts."""

import json
import random

import pytest

from ftcourse import capstone
from ftcourse.capstone import TaskError
from ftcourse.tasks import Example

from conftest import solution_cell


@pytest.fixture(scope="module")
def make_example():
    return solution_cell("04_lora", "capstone_task")["make_example"]


def test_reference_task_has_room_and_varied_answers(make_example):
    splits = capstone.capstone_splits(make_example, capstone.MIN_TRAIN_EXAMPLES, 64, heldout_seed=99)
    assert len(splits["train"]) == capstone.MIN_TRAIN_EXAMPLES
    assert len(splits["validation"]) == len(splits["heldout"]) == 64
    assert splits["overlap_heldout"] <= 0.1
    assert capstone.task_report(splits["heldout"])["top_answer_share"] <= 0.5
    index = capstone.NearDuplicateIndex(splits["train"])
    assert not any(index.overlaps(e) for e in splits["heldout"] + splits["validation"])


def test_a_tiny_task_cannot_hold_anything_out():
    def make(rng):
        a = rng.randint(1, 20)
        return f"Double {a}.", str(2 * a)

    with pytest.raises(TaskError, match="distinct new prompts"):
        capstone.capstone_splits(make, 1000, 64)


def test_rephrasings_of_training_items_count_as_overlap():
    def make(rng):
        n = rng.randint(1, 300)
        return rng.choice(["Square of {}?", "square of {} ?", "SQUARE OF {}!", "What is the square of {}?"]).format(n), str(n * n)

    with pytest.raises(TaskError, match="repeats itself"):
        capstone.capstone_splits(make, 1000, 64)
    index = capstone.NearDuplicateIndex([Example("What is the square of 12?", "144")])
    assert index.overlaps(Example("what is the square of 12", "144"))
    assert not index.overlaps(Example("What is the square of 13?", "169"))


@pytest.mark.parametrize("item,message", [("just a string", "must return"), (("p", 3), "must be strings"),
                                          (("p", ""), "must not be empty"), (("p", "two\nlines"), "one line")])
def test_bad_generator_output_is_named(item, message):
    with pytest.raises(TaskError, match=message):
        capstone.draw_task(lambda rng: item, 5, 0)


def _from_file(source: str, path):
    """Define functions from a real file, as a notebook cell does (inspect.getsource needs a file)."""
    import importlib.util

    path.write_text(source)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_saved_artifacts_round_trip_and_catch_outside_names(tmp_path):
    import jupytext
    from pathlib import Path

    source = Path(__file__).resolve().parent.parent / "solutions" / "04_lora" / "04_lora.py"
    cell = next(c for c in jupytext.read(source).cells if c.metadata.get("nbgrader", {}).get("grade_id") == "capstone_task")
    make_example = _from_file(cell.source, tmp_path / "task_cell.py").make_example
    train = capstone.draw_task(make_example, 20, 1)
    capstone.save_capstone(make_example, train, tmp_path)
    assert capstone.load_train_file(tmp_path / "train.jsonl") == train
    again = capstone.load_generator((tmp_path / "task.py").read_text())
    assert again(random.Random(3)) == make_example(random.Random(3))
    leaky = _from_file('OUTSIDE = ["a", "b"]\n\ndef make_example(rng):\n    return f"Pick {rng.random()}", rng.choice(OUTSIDE)\n',
                       tmp_path / "leaky_cell.py").make_example
    with pytest.raises(TaskError, match="outside the function"):
        capstone.save_capstone(leaky, train, tmp_path / "leaky")
    (tmp_path / "bad.jsonl").write_text(json.dumps({"prompt": "x", "answer": "y"}) + "\n" + '{"prompt": "x"}\n')
    with pytest.raises(TaskError, match="row 2"):
        capstone.load_train_file(tmp_path / "bad.jsonl")
