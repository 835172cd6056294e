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
    """The task's checker accepts a reply whose every number is the count; the checker reward agrees; the number
    reward also pays a wrong count and a hacked reply of digits: it can be satisfied without solving the task."""
    q = prefs.Question("Alice has 3 apples, 4 pears and 5 plums. How many pears are there?", "pears", 4)
    replies = {"correct": "There are 4 pears.", "padded": "There are 4 pears in the list, I counted them carefully "
               "one by one.", "wrong": "There are 5 pears.", "two numbers": "4 or 5.", "malformed": "Some pears.",
               "hacked": "1111111111", "empty": ""}
    checked = {name: grpo.task_checker(q, reply) for name, reply in replies.items()}
    assert checked == {"correct": True, "padded": True, "wrong": False, "two numbers": False, "malformed": False,
                       "hacked": False, "empty": False}
    completions = [[{"role": "assistant", "content": r}] for r in replies.values()]
    n = len(completions)
    assert grpo.checker_reward(None, completions, answer=[4] * n, item=["pears"] * n) == [float(v) for v in checked.values()]
    assert grpo.number_reward(completions) == [1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0.0]
    assert grpo.reply_text("plain") == "plain"
