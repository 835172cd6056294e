"""The knowledge-vs-retrieval lesson's instruments: fictional facts, their changes, the answer check, the retriever."""

import pytest

from ftcourse.knowledge import (KINDS, FactRetriever, answer_found, changed_facts, make_facts, question_examples,
                                retrieval_examples, statement_examples)


def test_facts_are_distinct_fictional_and_seeded():
    facts = make_facts(24, 7)
    assert make_facts(24, 7) == facts and make_facts(24, 8) != facts
    assert len({f.subject for f in facts}) == 24 and {f.kind for f in facts} == set(KINDS)
    for f in facts:  # the answer is stated by the note and asked for by the question, which does not contain it
        assert f.answer in f.statement and f.answer not in f.question and f.subject in f.question
    with pytest.raises(ValueError, match="n >= 1"):
        make_facts(0, 1)


def test_changed_facts_change_a_share_and_keep_the_rest():
    facts = make_facts(24, 7)
    changed = changed_facts(facts, 0.25, 9)
    moved = [i for i, (a, b) in enumerate(zip(facts, changed)) if a != b]
    assert moved == list(range(0, 24, 4))
    assert all(facts[i].subject == changed[i].subject and facts[i].answer != changed[i].answer for i in moved)
    with pytest.raises(ValueError, match="share"):
        changed_facts(facts, 0, 9)


def test_answer_found_wants_the_answer_as_a_word_on_the_first_line():
    (fact,) = [f for f in make_facts(3, 7) if f.kind == "crew"]
    assert answer_found([f"The crew is {fact.answer} sailors."], [fact]) == 1.0
    assert answer_found([f"The crew is 9{fact.answer} sailors."], [fact]) == 0.0  # a longer number is not it
    assert answer_found([f"I do not know.\n{fact.answer}"], [fact]) == 0.0  # only the first line counts
    assert answer_found([""], [fact]) == 0.0
    with pytest.raises(ValueError, match="2 replies for 1 facts"):
        answer_found(["a", "b"], [fact])


def test_prompts_carry_what_each_option_may_see():
    facts = make_facts(6, 7)
    notes = [f.statement for f in facts]
    assert all(f.answer not in e.prompt for f, e in zip(facts, question_examples(facts)))
    assert all(e.answer == f.statement for f, e in zip(facts, statement_examples(facts)))
    with_notes = retrieval_examples(facts, notes, [1, 0, 2, 3, 4, 5])
    assert notes[1] in with_notes[0].prompt and facts[0].question in with_notes[0].prompt


def test_the_retriever_finds_each_question_s_note():
    facts = make_facts(12, 7)
    notes = [f.statement for f in facts]
    picked = FactRetriever().pick([f.question for f in facts], notes)
    assert sum(i == j for j, i in enumerate(picked)) >= 11
    with pytest.raises(ValueError, match="at least one note"):
        FactRetriever().pick(["q"], [])
