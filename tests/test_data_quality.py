"""Raw-dump parsing, planted problems and the cleaning check of notebook 02."""

import json

import pytest

from ftcourse.data_quality import (PROBLEMS, SHIPPED_DUMP, DataError, char_ngrams, jaccard, make_raw_dump,
                                   normalize_text, parse_chat_row, score_cleaning, shipped_dump)
from conftest import solution_cell
from ftcourse.grading import check_in_kernel
from ftcourse.grading.checks import hidden_dump
from ftcourse.presets import get_preset
from ftcourse.tasks import number_task_splits, number_words


def check_clean_dump(clean_dump):
    return check_in_kernel("cleaning_tests", get_preset("cpu"), {"clean_dump": clean_dump})


def test_shipped_dump_is_what_the_generator_writes():
    lines, labels, _ = shipped_dump()
    assert SHIPPED_DUMP.read_text(encoding="utf-8").splitlines() == lines
    assert {label for label in labels} == {"ok", *PROBLEMS}


def test_hidden_dump_differs_from_the_shipped_one():
    shipped, _, _ = shipped_dump()
    hidden, labels, _ = hidden_dump(123)
    assert not set(shipped) & set(hidden)
    assert hidden_dump(123)[0] == hidden  # deterministic for a seed


@pytest.mark.parametrize("line,field,problem", [
    ('{"id": 1, "messages": [{"role": "user", "content": "hi"}', "line", "malformed"),
    ('{"id": 1, "conversation": []}', "messages", "malformed"),
    ('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": 7}]}', "messages[1].content", "malformed"),
    ('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant"}]}', "messages[1]", "malformed"),
    ('{"messages": [{"role": "human", "content": "q"}, {"role": "gpt", "content": "a"}]}', "messages[0].role", "wrong_role"),
    ('{"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}]}', "messages", "wrong_role"),
])
def test_parse_errors_name_the_row_and_the_field(line, field, problem):
    with pytest.raises(DataError) as info:
        parse_chat_row(line, 41)
    assert info.value.field == field and info.value.problem == problem
    assert str(info.value).startswith(f"row 41: {field}: ")


def test_a_good_row_parses():
    row = parse_chat_row(json.dumps({"id": "x", "messages": [{"role": "system", "content": "s"},
                                                             {"role": "user", "content": "q"},
                                                             {"role": "assistant", "content": "a"}]}), 0)
    assert row["id"] == "x" and len(row["messages"]) == 3


def test_similarity_helpers():
    assert normalize_text("  Hello,\u00a0WORLD!\t") == "hello world"
    a, b = char_ngrams("forty-two thousand"), char_ngrams("Forty two  thousand!")
    assert jaccard(a, b) == 1.0
    assert jaccard(char_ngrams("one hundred"), char_ngrams("seventy-seven")) < 0.1


def test_number_words():
    assert number_words(0) == "zero"
    assert number_words(70) == "seventy"
    assert number_words(1012) == "one thousand and twelve"
    assert number_words(99999) == "ninety-nine thousand nine hundred and ninety-nine"
    with pytest.raises(ValueError, match="0..999999"):
        number_words(10**6)


def test_number_splits_are_disjoint():
    s = number_task_splits(200, 32, heldout_seed=5)
    answers = [{e.answer for e in s[k]} for k in ("train", "test", "validation", "heldout")]
    for i in range(4):
        for j in range(i + 1, 4):
            assert not answers[i] & answers[j]


def test_the_notebook_solution_scores_perfectly_on_the_shipped_dump_and_passes_the_hidden_one(tokenizer):
    clean_dump = solution_cell("02_data_and_tooling", "cleaning_pipeline")["clean_dump"]
    lines, labels, tests = shipped_dump()
    kept, flags = clean_dump(lines, tests, tokenizer, 128)
    score = score_cleaning(flags, labels)
    assert score["precision"] == score["recall"] == 1.0 and len(kept) == labels.count("ok")
    assert check_clean_dump(clean_dump).passed


def test_a_parse_only_pipeline_fails_and_names_what_it_missed(tokenizer):
    from ftcourse.data_quality import DataError

    def parse_only(lines, tests, tok, max_tokens):
        kept, flags = [], {}
        for i, line in enumerate(lines):
            try:
                kept.append(parse_chat_row(line, i))
            except DataError as error:
                flags[i] = error.problem
        return kept, flags

    with pytest.raises(AssertionError, match="recall of leaked 0.00.*recall of duplicate 0.00"):
        check_clean_dump(parse_only)


def test_flagging_everything_fails_on_precision(tokenizer):
    with pytest.raises(AssertionError, match="precision"):
        check_clean_dump(lambda lines, *a: ([], {i: "malformed" for i in range(len(lines))}))


def test_score_rejects_rows_outside_the_dump():
    with pytest.raises(ValueError, match="rows 0..2"):
        score_cleaning({5: "duplicate"}, ["ok", "ok", "duplicate"])


def test_dump_needs_enough_examples():
    with pytest.raises(ValueError, match="make_raw_dump needs"):
        make_raw_dump(number_task_splits(10, 4)["train"], [], 0)


def test_leakage_comparison_separates_memory_from_the_rule():
    """Losses that fall on every item by the same factor show no memory; an extra fall on the leaked ones does."""
    import math

    from ftcourse.data_quality import leakage_comparison

    clean = {"leaked": {"exact_match": 0.5, "losses": [0.4, 0.2, 0.8, 0.1]},
             "unseen": {"exact_match": 0.5, "losses": [0.3, 0.6, 0.2, 0.5]}}
    uniform = {part: {"exact_match": 0.6, "losses": [x / 2 for x in v["losses"]]} for part, v in clean.items()}
    result = leakage_comparison(uniform, clean)
    assert result["leaked"] == pytest.approx(math.log(0.5)) and result["memory"] == pytest.approx(0.0, abs=1e-12)
    memorised = dict(uniform, leaked={"exact_match": 0.9, "losses": [x / 8 for x in clean["leaked"]["losses"]]})
    result = leakage_comparison(memorised, clean)
    assert result["memory"] == pytest.approx(math.log(1 / 4))
    assert [row["test items"] for row in result["rows"]] == ["leaked", "unseen"]
    with pytest.raises(ValueError, match="same items"):
        leakage_comparison({**memorised, "unseen": {"exact_match": 0, "losses": [0.1]}}, clean)


def test_lookup_benchmark_is_seeded_with_distinct_answers_no_rule_gives():
    from ftcourse.data_quality import LOOKUP_WORDS, lookup_benchmark

    items = lookup_benchmark(16, seed=0)
    assert items == lookup_benchmark(16, seed=0) and items != lookup_benchmark(16, seed=1)
    assert len({e.answer for e in items}) == 16 and len({e.prompt for e in items}) == 16
    assert all(e.answer in LOOKUP_WORDS and e.answer not in e.prompt for e in items)
    with pytest.raises(ValueError, match="n must be 2"):
        lookup_benchmark(len(LOOKUP_WORDS) + 1)
