"""Notebook 08's instruments: TRL's group-relative advantage (the mirror Exercise 8.1 is compared with) against a real
GRPOTrainer batch on rewards this test generates, the task's checker and the reward functions on crafted replies,
and the packaged training cell."""

import random

import pytest
import torch

from ftcourse import grpo
from ftcourse import preferences as prefs


def test_group_advantages_equal_a_real_grpotrainer_batch(tmp_path):
    """One real GRPOTrainer step through `grpo.train_grpo` (the grader's training cell) with two reward functions
    that return rewards this test draws: a tied group, a None reward, a completion no function scores, two weights.
    The trainer's own advantages equal `trl_group_advantages` on the same rewards."""
    from peft import LoraConfig
    from trl import GRPOConfig, GRPOTrainer

    from conftest import keep_first_layers
    from ftcourse.models import load_model, load_tokenizer
    from ftcourse.presets import get_preset

    rng = random.Random(3)
    drawn = {"a": [], "b": []}

    def reward_a(completions, **_):
        values = [float(rng.choice([0, 1, 2])) for _ in completions]
        values[0:4] = [1.0] * 4  # the first prompt's group: all the same reward -> zero advantage
        values[5] = None  # function a has nothing to say about this one
        values[6] = None  # and neither has b: unscorable
        drawn["a"].append(values)
        return values

    def reward_b(completions, **_):
        values = [rng.uniform(-1, 1) for _ in completions]
        values[0:4] = [0.5] * 4
        values[6] = None
        drawn["b"].append(values)
        return values

    seen = []

    class Recording(GRPOTrainer):
        def _generate_and_score_completions(self, *args, **kwargs):
            out = super()._generate_and_score_completions(*args, **kwargs)
            seen.append(out["advantages"].detach().clone())
            return out

    model = load_model()
    keep_first_layers(model, 2)
    args = GRPOConfig(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=8, num_generations=4,
                      max_completion_length=4, reward_weights=[1.0, 0.5], seed=0,
                      **grpo.preset_grpo_args(get_preset("cpu")))
    _, result, logged = grpo.train_grpo(model, load_tokenizer(), prefs.make_questions(4, 1), [reward_a, reward_b],
                                        LoraConfig(task_type="CAUSAL_LM", r=4, target_modules=["q_proj"]), args,
                                        progress=False, trainer_class=Recording)
    assert result.steps == 1 and len(logged) == 1 and "rewards/reward_a/mean" in logged[0]
    nan = float("nan")
    rewards = torch.tensor([[nan if a is None else a, nan if b is None else b]
                            for a, b in zip(drawn["a"][0], drawn["b"][0])])
    mine = grpo.trl_group_advantages(rewards, [1.0, 0.5], 4)
    assert seen[0].shape == mine.shape == (8,)
    assert mine.tolist() == pytest.approx(seen[0].tolist(), abs=1e-5)
    assert mine[:4].abs().max() == 0 and mine[6] == 0 and mine[4:].abs().max() > 0.5  # the cases are not all zero
    assert logged[0]["frac_reward_zero_std"] == pytest.approx(0.5)  # one of the two groups gave no gradient


def test_group_advantages_by_hand():
    """A group's rewards minus their mean over their standard deviation (+1e-4); a tied group is zero; "none" leaves
    the scale; "batch" divides by the batch's deviation; malformed input is refused with the shape it expected."""
    rewards = torch.tensor([[1.0], [0.0], [0.0], [0.0], [1.0], [1.0], [1.0], [1.0]])
    advantages = grpo.trl_group_advantages(rewards, [1.0], 4)
    std = torch.tensor([1.0, 0, 0, 0]).std().item()
    assert advantages[:4].tolist() == pytest.approx([0.75 / (std + 1e-4), -0.25 / (std + 1e-4), -0.25 / (std + 1e-4),
                                                     -0.25 / (std + 1e-4)], rel=1e-5)
    assert advantages[4:].tolist() == [0, 0, 0, 0]
    assert grpo.trl_group_advantages(rewards * 2, [1.0], 4, "none")[:4].tolist() == pytest.approx([1.5, -0.5, -0.5, -0.5])
    batch = grpo.trl_group_advantages(rewards, [1.0], 4, "batch")
    assert batch[0].item() == pytest.approx(0.75 / (rewards.std().item() + 1e-4), rel=1e-5)
    with pytest.raises(ValueError, match=r"\[completions, 2 functions\]"):
        grpo.trl_group_advantages(rewards, [1.0, 1.0], 4)
    with pytest.raises(ValueError, match="groups of num_generations=3"):
        grpo.trl_group_advantages(rewards, [1.0], 3)
    with pytest.raises(ValueError, match="scale_rewards"):
        grpo.trl_group_advantages(rewards, [1.0], 4, "groups")


def test_the_checker_and_the_reward_functions_on_crafted_replies():
    """The task's checker accepts a reply whose every number is the count; the checker reward agrees; the
    contains-the-count reward also pays replies that list many numbers, or hold the count inside another number:
    it can be satisfied without solving the task."""
    q = prefs.Question("Alice has 3 apples, 4 pears and 5 plums. How many pears are there?", "pears", 4)
    replies = {"correct": "There are 4 pears.", "padded": "There are 4 pears in the list, I counted them carefully "
               "one by one.", "wrong": "There are 5 pears.", "two numbers": "4 or 5.", "malformed": "Some pears.",
               "recited list": "- apples: 3\n- pears: 4\n- plums: 5", "inside another": "There are 14 pears.",
               "digits": "1111111111", "empty": ""}
    checked = {name: grpo.task_checker(q, reply) for name, reply in replies.items()}
    assert checked == {"correct": True, "padded": True, "wrong": False, "two numbers": False, "malformed": False,
                       "recited list": False, "inside another": False, "digits": False, "empty": False}
    completions = [[{"role": "assistant", "content": r}] for r in replies.values()]
    n = len(completions)
    assert grpo.checker_reward(None, completions, answer=[4] * n, item=["pears"] * n) == [float(v) for v in checked.values()]
    contains = dict(zip(replies, grpo.contains_count_reward(None, completions, answer=[4] * n)))
    assert contains == {"correct": 1.0, "padded": 1.0, "wrong": 0.0, "two numbers": 1.0, "malformed": 0.0,
                        "recited list": 1.0, "inside another": 1.0, "digits": 0.0, "empty": 0.0}
    assert grpo.reply_text("plain") == "plain"


def _reference_setup() -> str:
    from conftest import reference_solution

    return reference_solution("08_grpo", "grpo_setup")


def _grade_grpo_setup(source: str, tmp_path):
    from conftest import grade_outcome_cell

    return grade_outcome_cell("grpo_final_outcome", "grpo_setup", source, tmp_path)


@pytest.mark.parametrize("change,named", [
    (("max_steps=16", "max_steps=17"), "at most 16"),
    (("num_generations=8, per_device_train_batch_size=16", "num_generations=8, per_device_train_batch_size=12"),
     "divisible by num_generations"),
    (("max_completion_length=12", "max_completion_length=64"), "max_completion_length must be an integer between 4"),
    (("reward_weights=[1.0, 0.2]", "reward_weights=[1.0]"), "one weight per function"),
    (("seed=SEED, **GRPO_ARGS)", "seed=SEED, loss_type='grpo', **GRPO_ARGS)"), "this exercise keeps it at"),
    (("reward_weights=[1.0, 0.2]", "reward_weights=[10**400, 0.2]"), "list of numbers in [-100, 100]"),
    (("temperature=0.7", "temperature=0.01"), "temperature must be a number in [0.1, 2]"),
    (("reward_funcs = [correct_count, one_short_answer]", "reward_funcs = correct_count"), "non-empty list"),
])
def test_exercise_8_2_refuses_what_it_would_not_train_before_training(change, named, learner_runtime, tmp_path):
    """Part of the tamper suite for 8.2: choices the grader cannot train fail with the field named, before any
    training."""
    old, new = change
    reference = _reference_setup()
    assert old in reference
    verdict = _grade_grpo_setup(reference.replace(old, new), tmp_path)
    assert not verdict.passed and named in verdict.message, verdict
    assert not (tmp_path / "adapter").exists()  # refused before any training


GRPO_PROVIDES = ("preset", "SEED", "LoraConfig", "GRPOConfig", "GRPO_ARGS")
TWO_REPLIES = dict(prompts=[[{"role": "user", "content": "How many pears?"}]] * 2, item=["pears"] * 2,
                   answer=[4, 4], completions=[[{"role": "assistant", "content": "There are 4 pears."}]] * 2,
                   completion_ids=[[1], [2]])


@pytest.mark.parametrize("body,named", [
    ("    from ftcourse.grpo import task_checker\n    from ftcourse.preferences import Question\n"
     "    return [float(task_checker(Question('', i, a), c[-1]['content'])) for c, a, i in zip(completions, answer, item)]\n",
     "reached ftcourse.grpo.task_checker"),
    ("    from ftcourse.preferences import judge, Question\n"
     "    return [judge(Question('', i, a), c[-1]['content']) for c, a, i in zip(completions, answer, item)]\n",
     "reached ftcourse.preferences.judge"),
    ("    return [1.0]\n", "must return a list of 2 rewards"),
    ("    return [float('inf')] * len(completions)\n", "must be finite"),
    ("    return ['yes'] * len(completions)\n", "a reward is a number"),
])
def test_exercise_8_2_rewards_that_borrow_the_checker_or_are_malformed_are_refused(body, named, learner_runtime):
    """The correctness reward is the learner's to write: the task's checker and the judge are hidden from the reward
    functions while the grader asks for rewards; a malformed answer is refused with its reason. Through the grader's
    own path (`learner.session` and `produce.remote_rewards`), on one batch of two replies."""
    from ftcourse.grading.learner import Cells, LearnerCodeError, session
    from ftcourse.grading.produce import remote_rewards

    reference = _reference_setup()
    old = "def correct_count(prompts, completions, answer, **kwargs):"
    assert old in reference
    source = reference.replace(old, f"def correct_count(prompts, completions, answer, item, **kwargs):\n{body}"
                                    "def unused(prompts, completions, answer, **kwargs):")
    with session(Cells({"grpo_setup": source}, "cpu", 0), ["grpo_setup"], GRPO_PROVIDES) as ask:
        first, _ = remote_rewards(ask, ["correct_count", "one_short_answer"])
        with pytest.raises(LearnerCodeError, match=named):
            first(**TWO_REPLIES)


def test_exercise_8_2_the_references_rewards_pass_the_same_path(learner_runtime):
    """The other side of the test above: on the same batch, through the same path, the reference's reward functions
    answer (both replies right and short)."""
    from ftcourse.grading.learner import Cells, session
    from ftcourse.grading.produce import remote_rewards

    with session(Cells({"grpo_setup": _reference_setup()}, "cpu", 0), ["grpo_setup"], GRPO_PROVIDES) as ask:
        rewards = [f(**TWO_REPLIES) for f in remote_rewards(ask, ["correct_count", "one_short_answer"])]
    assert rewards == [[1.0, 1.0]] * 2


def test_remote_rewards_check_what_the_child_sends():
    """The grader's side of the reward calls: one call per batch serves every function, and data that is not one
    finite number or None per completion and function is refused with the function named."""
    from ftcourse.grading.learner import LearnerCodeError
    from ftcourse.grading.produce import remote_rewards

    answers = iter([[[1.0, None], [0.5, 0.0]], [[1.0, float("nan")], [0, 0]], [[1.0, True], [0, 0]], [[1.0]]])
    calls = []

    def ask(op, batch):
        calls.append((op, batch))
        return next(answers)

    first, second = remote_rewards(ask, ["correct count", "form"])
    assert first.__name__ == "correct_count" and second.__name__ == "form"
    batch = dict(prompts=["p", "p"], completions=[[{"role": "assistant", "content": "4"}]] * 2,
                 completion_ids=[[1], [2]], answer=[4, 4], item=["pears", "pears"], trainer_state=None)
    assert first(**batch) == [1.0, None] and second(**batch) == [0.5, 0.0] and len(calls) == 1
    for named in ("correct count returned nan", "correct count returned True", "no list of 2 rewards"):
        with pytest.raises(LearnerCodeError, match=named):
            first(**batch | {"completions": list(batch["completions"])})  # a new batch: asks again


@pytest.mark.parametrize("reward,named", [
    ("1.0 if str(count) in _ else 0.0", "(the list recited)"),  # section 3's careless reward: the count anywhere
    ("1.0 if numbers else 0.0", "(wrong count)"),  # any number
    ("1.0", "(wrong count)"),  # everything
    ("1.0 if numbers and numbers[0] == count else 0.0", "(the list recited)"),  # the first number only
    ("1.0 if numbers and all(str(count) in str(n) for n in numbers) else 0.0", "(count inside a number)"),
])
def test_exercise_8_2_a_reward_satisfied_without_the_count_is_refused_before_training(reward, named,
                                                                                    learner_runtime, tmp_path):
    """The skill of 8.2 is a reward that only the task's solution earns: the grader audits the learner's weighted
    reward on crafted replies before it trains, and a correctness reward that pays a reply which does not solve the
    task as much as the right answer (section 3's careless reward, any number, everything, the first number, the
    count as a substring of each number) is refused, the reply named, with nothing trained. (Section 3's careless
    reward, trained with the reference's recipe, gained +0.14 on the public test seed: its hack was not found in 16
    steps at temperature 0.7, so the outcome alone would not have caught it.)"""
    reference = _reference_setup()
    old = "1.0 if numbers and all(n == count for n in numbers) else 0.0"
    assert old in reference
    careless = (reference.replace(old, reward).replace("reward_funcs = [correct_count, one_short_answer]",
                                                        "reward_funcs = [correct_count]")
                .replace("reward_weights=[1.0, 0.2], ", ""))
    verdict = _grade_grpo_setup(careless, tmp_path)
    assert not verdict.passed and named in verdict.message and "without counting" in verdict.message, verdict
    assert not (tmp_path / "adapter").exists()


def test_the_audit_passes_the_reference_and_names_the_reply_a_careless_reward_pays():
    """`grpo.audit_failure` on the crafted replies: the checker as the reward passes; the contains-the-count reward
    fails on the recited list; a format reward alone, or beside a correctness reward of weight 0, fails on the wrong
    count; an abstaining reward pays nothing and fails."""
    questions = prefs.preference_splits(400, 64)["train"][:4]
    rows, batch = grpo.audit_batch(questions)
    assert [kind for _, kind, _ in rows[:6]] == list(grpo.AUDIT_KINDS) and len(rows) == 24
    checker = grpo.checker_reward(**batch)
    assert grpo.audit_failure(rows, [checker]) is None
    assert "(the list recited)" in grpo.audit_failure(rows, [grpo.contains_count_reward(**batch)])
    short = [1.0 if len(c[-1]["content"].split()) <= 6 else 0.0 for c in batch["completions"]]
    assert "(wrong count)" in grpo.audit_failure(rows, [short])  # a format reward alone
    assert grpo.audit_failure(rows, [checker, short], [1.0, 0.2]) is None  # beside correctness, it is fine
    assert "(wrong count)" in grpo.audit_failure(rows, [checker, short], [0.0, 1.0])  # ... unless correctness weighs 0
    assert grpo.audit_failure(rows, [[None] * len(rows)]) is not None  # no opinion on anything pays nothing


def test_the_references_reward_functions_on_crafted_completions():
    """Exercise 8.2's reference rewards, run as the solution cell defines them: the right reply earns the most
    (correctness 1 + format 0.2), a wrong count only the small format reward, a malformed reply (no number, two
    numbers, a recited list) nothing, and the grader's audit passes on the 8 questions it uses."""
    from ftcourse.grading.context import build

    namespace = build(("preset", "SEED", "LoraConfig", "GRPOConfig", "GRPO_ARGS"), "cpu", 0)
    exec(_reference_setup(), namespace)
    funcs, weights = namespace["reward_funcs"], namespace["grpo_config"].reward_weights
    q = prefs.Question("Answer the question about the list.\n- pears: 4\n- plums: 9\nHow many pears are there?", "pears", 4)
    replies = {"correct": "There are 4 pears in total.", "wrong": "There are 9 pears in total.",
               "no number": "Some pears.", "two numbers": "4 or 9.", "recited": "- pears: 4\n- plums: 9",
               "rambling right": "There are 4 pears in the list, which I counted one by one very carefully."}
    batch = dict(prompts=[q.prompt] * len(replies), answer=[4] * len(replies), item=["pears"] * len(replies),
                 completions=[[{"role": "assistant", "content": r}] for r in replies.values()])
    scores = [f(**batch) for f in funcs]
    weighted = {name: sum(w * s[i] for w, s in zip(weights, scores)) for i, name in enumerate(replies)}
    assert weighted == pytest.approx({"correct": 1.2, "wrong": 0.2, "no number": 0.0, "two numbers": 0.0,
                                      "recited": 0.0, "rambling right": 1.0})
    rows, audit = grpo.audit_batch(prefs.preference_splits(400, 64)["train"][:8])
    assert grpo.audit_failure(rows, [f(**audit) for f in funcs], weights) is None


def test_a_batch_where_a_wrong_reply_earns_as_much_as_a_right_one_is_refused():
    """The audit's rule held on every training batch (a reward could answer the audit honestly and then change):
    among replies to one prompt, each reply the checker accepts must earn more than each it rejects."""
    from ftcourse.grading.learner import LearnerCodeError
    from ftcourse.grading.produce import _paid_for_the_task

    prompt = [{"role": "user", "content": "How many pears?"}]
    batch = {"prompts": [prompt] * 3 + [[{"role": "user", "content": "How many plums?"}]],
             "completions": [[{"role": "assistant", "content": t}] for t in ("4 pears.", "5 pears.", "Pears.", "9.")],
             "answer": [4, 4, 4, 2], "item": ["pears"] * 3 + ["plums"]}
    _paid_for_the_task(batch, [[1.0, 0.2, 0.0, 5.0]], None)  # the plums' wrong reply competes with no right one
    _paid_for_the_task(batch, [[1.0, 0.0, None, 0.0], [0.2, 0.2, 0.0, 0.2]], [1.0, 0.2])
    with pytest.raises(LearnerCodeError, match="'5 pears.', which does not solve the task"):
        _paid_for_the_task(batch, [[1.0, 1.0, 0.0, 0.0]], None)

