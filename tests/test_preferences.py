"""The preference data of notebooks 06 and 07: the judge is the ground truth, every pair follows it."""

import random

import pytest
import torch

from ftcourse import preferences as prefs


def test_judge_scores_right_and_brief_over_padded_over_wrong():
    q = prefs.Question("...", "pears", 7)
    assert prefs.judge(q, "7") == prefs.judge(q, "There are 7.") == 1.0
    assert prefs.judge(q, "Great question! After checking the list, the number of pears is 7. I hope this helps!") == 0.5
    assert prefs.judge(q, "3") == prefs.judge(q, "7 or maybe 3") == prefs.judge(q, "seven") == prefs.judge(q, "") == 0.0
    with pytest.raises(TypeError, match="must be a string"):
        prefs.judge(q, 7)


def test_questions_are_deterministic_distinct_and_answerable_from_the_list():
    a, b = prefs.make_questions(50, 1), prefs.make_questions(50, 1)
    assert a == b and len({q.prompt for q in a}) == 50
    for q in a:
        assert f"- {q.item}: {q.answer}\n" in q.prompt and q.prompt.startswith(prefs.INSTRUCTION)
        assert q.prompt.endswith(f"How many {q.item} are there?")
    with pytest.raises(ValueError, match="n must be >= 0"):
        prefs.make_questions(-1, 0)


def test_every_pair_follows_the_judge_and_kinds_isolate_one_property():
    questions = prefs.make_questions(90, 3)
    pairs = prefs.make_pairs(questions, seed=4)
    assert [p.kind for p in pairs[:5]] == list(prefs.PAIR_KINDS) and set(prefs.REWARD_KINDS) <= set(prefs.PAIR_KINDS)
    twice = prefs.make_pairs(questions[:6], seed=4, kinds=("echo", "echo", "padded"))
    assert [p.kind for p in twice] == ["echo", "echo", "padded"] * 2  # a kind named twice gets twice the share
    for q, p in zip(questions, pairs):
        chosen, rejected = prefs.judge(q, p.chosen), prefs.judge(q, p.rejected)
        assert chosen > rejected
        if p.kind == "padded":
            assert (chosen, rejected) == (1.0, 0.5)
        elif p.kind == "wrong":
            assert (chosen, rejected) == (1.0, 0.0) and len(p.rejected.split()) <= prefs.CONCISE_WORDS
        elif p.kind == "padded_wrong":  # the length-biased trap: the longer reply is the right one
            assert (chosen, rejected) == (0.5, 0.0) and len(p.chosen) > len(p.rejected)
        elif p.kind == "no_count":  # brevity points the wrong way: the reply without a count is shorter
            assert (chosen, rejected) == (1.0, 0.0) and not prefs.reply_numbers(p.rejected)
            assert len(p.rejected.split()) < len(p.chosen.split())
        else:  # echo: the right number is there, among the list's others, in fewer words than the padded answer
            assert p.kind == "echo" and (chosen, rejected) == (0.5, 0.0) and q.answer in prefs.reply_numbers(p.rejected)
            assert len(set(prefs.reply_numbers(p.rejected))) >= 3 and len(p.rejected.split()) < len(p.chosen.split())
    row = pairs[0].conversational()
    assert row["prompt"][0]["role"] == "user" and row["chosen"][0]["role"] == row["rejected"][0]["role"] == "assistant"
    with pytest.raises(ValueError, match="sequence of names from"):
        prefs.make_pairs(questions, 0, kinds=("louder",))
    with pytest.raises(ValueError, match="sequence of names"):
        prefs.make_pairs(questions, 0, kinds="padded")


def test_splits_are_disjoint_and_the_heldout_one_needs_the_seed():
    splits = prefs.preference_splits(200, 40)
    assert "heldout" not in splits and len(splits["validation"]) == 40
    with_heldout = prefs.preference_splits(200, 40, heldout_seed=918273)
    prompts = [{q.prompt for q in with_heldout[k]} for k in ("train", "validation", "heldout")]
    assert all(len(p) > 0 for p in prompts)
    assert not (prompts[0] & prompts[1] or prompts[0] & prompts[2] or prompts[1] & prompts[2])


def test_reward_trainer_loss_is_trls_bradley_terry():
    torch.manual_seed(0)
    chosen, rejected, margin = torch.randn(6), torch.randn(6), torch.rand(6)
    expected = -torch.nn.functional.logsigmoid(chosen - rejected).mean()
    assert prefs.reward_trainer_loss(chosen, rejected).item() == pytest.approx(expected.item(), rel=1e-6)
    with_margin = -torch.nn.functional.logsigmoid(chosen - rejected - margin).mean()
    assert prefs.reward_trainer_loss(chosen, rejected, margin).item() == pytest.approx(with_margin.item(), rel=1e-6)
    centred = expected + 0.01 * ((chosen + rejected) ** 2).mean()
    assert prefs.reward_trainer_loss(chosen, rejected, center_rewards_coefficient=0.01).item() == pytest.approx(
        centred.item(), rel=1e-6)
    # a wrong from-scratch loss (the sign flipped) is told apart
    assert prefs.reward_trainer_loss(chosen, rejected).item() != pytest.approx(
        -torch.nn.functional.logsigmoid(rejected - chosen).mean().item(), rel=1e-3)
