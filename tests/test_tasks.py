import datetime as dt

from ftcourse.tasks import date_task_splits, disjoint_from, make_date_examples


def test_same_seed_same_examples_and_different_seed_differs():
    assert make_date_examples(50, 7) == make_date_examples(50, 7)
    assert make_date_examples(50, 7) != make_date_examples(50, 8)


def test_answers_are_valid_iso_dates_and_prompts_distinct():
    examples = make_date_examples(300, 1)
    assert len({e.prompt for e in examples}) == 300
    for e in examples:
        assert dt.date.fromisoformat(e.answer).isoformat() == e.answer
        assert e.messages()[-1] == {"role": "assistant", "content": e.answer}


def test_heldout_never_overlaps_train_or_validation():
    splits = date_task_splits(400, 64, heldout_seed=99)
    train_answers = {e.answer for e in splits["train"]}
    assert len(splits["heldout"]) == len(splits["validation"]) == 64
    assert not train_answers & {e.answer for e in splits["heldout"]}
    assert not train_answers & {e.answer for e in splits["validation"]}
    assert not {e.prompt for e in splits["validation"]} & {e.prompt for e in splits["heldout"]}


def test_disjoint_from_drops_shared_items():
    a = make_date_examples(5, 3)
    assert disjoint_from(a, a[:2]) == a[2:] or len(disjoint_from(a, a[:2])) <= 3


def test_phone_splits_are_deterministic_disjoint_and_well_formed():
    import re

    from ftcourse.tasks import phone_task_splits

    a, b = phone_task_splits(200, 32, heldout_seed=7), phone_task_splits(200, 32, heldout_seed=7)
    assert a == b
    train_answers = {e.answer for e in a["train"]}
    for split in ("validation", "heldout"):
        assert len(a[split]) == 32
        assert not train_answers & {e.answer for e in a[split]}
    assert not {e.answer for e in a["validation"]} & {e.answer for e in a["heldout"]}
    for e in a["train"]:
        assert re.fullmatch(r"\d{3}-\d{3}-\d{4}", e.answer)
        assert e.answer.replace("-", "") in re.sub(r"\D", "", e.prompt)
