"""Notebook 08's instruments: GRPO with verifiable rewards on 06's counting task.

The task's checker (`task_checker`: the course's judge, right when every number in the reply is the asked count)
is what success is measured with; the notebook's learner writes the reward functions. This module holds the mirror
of TRL's group-relative advantage that Exercise 8.1 is compared with (`trl_group_advantages`, tested against a real
`GRPOTrainer` batch), the zero-advantage measurement of a model's sampled groups, the machine's `GRPOConfig`
arguments, and the packaged mirror of the notebook's training cell (`train_grpo`).
"""

from __future__ import annotations

from typing import Callable, Sequence

from .preferences import Question, judge, reply_numbers
from .presets import Preset
from .rlhf import reply_text  # noqa: F401  (notebook 08's reward functions call grpo.reply_text)

COMPLETION_TOKENS = 12  # a reply to a counting question: "There are 12 pears in total." is 8 tokens
MAX_GENERATIONS = 8  # the largest group the CPU preset samples (16 replies a step at 2 prompts)


def task_checker(question: Question, reply: str) -> bool:
    """The task's checker: the reply holds a number and every number in it is the asked count (the judge scores
    it above 0). What success is measured with; never the learner's reward."""
    return judge(question, reply) > 0


def checker_reward(prompts, completions, answer, item, **_) -> list[float]:
    """The checker as a GRPO reward function: 1.0 for a right reply, else 0.0."""
    return [float(task_checker(Question("", it, int(a)), reply_text(c))) for c, a, it in zip(completions, answer, item)]


def contains_count_reward(prompts, completions, answer, **_) -> list[float]:
    """1.0 when the asked count appears anywhere in the reply's text (a substring check): a careless correctness
    reward that a reply listing many numbers satisfies without counting anything."""
    return [float(str(int(a)) in reply_text(c)) for c, a in zip(completions, answer)]


AUDIT_KINDS = ("right", "wrong count", "the list recited", "hedged", "count inside a number", "no number")


def crafted_replies(question: Question) -> dict[str, str]:
    """The replies a reward is audited on, for one question: the right answer, and five that do not solve the task,
    each a way to earn a careless reward (`AUDIT_KINDS`): another count from the list, the list's counts recited,
    the right count hedged with another, the count inside a larger number, no number at all."""
    import re

    counts = [(name, int(n)) for name, n in re.findall(r"- (\w+): (\d+)", question.prompt)]
    wrong = next((n for _, n in counts if n != question.answer), question.answer + 1)
    item, answer = question.item, question.answer
    return dict(zip(AUDIT_KINDS, (f"There are {answer} {item} in total.", f"There are {wrong} {item} in total.",
                                  "\n".join(f"- {name}: {n}" for name, n in counts) or f"{answer} {wrong}",
                                  f"{answer} or {wrong}.", f"There are 1{answer} {item} in total.",
                                  f"I counted the {item} in the list.")))


def audit_batch(questions: Sequence[Question], tokenizer=None) -> tuple[list, dict]:
    """The crafted replies to `questions` as one reward batch in TRL's form (conversational prompts and completions,
    the answer and item columns, the replies' token ids when a tokenizer is given): (rows of (question, kind,
    reply), batch keyword arguments)."""
    rows = [(q, kind, reply) for q in questions for kind, reply in crafted_replies(q).items()]
    batch = {"prompts": [[{"role": "user", "content": q.prompt}] for q, _, _ in rows],
             "completions": [[{"role": "assistant", "content": reply}] for _, _, reply in rows],
             "completion_ids": [tokenizer(reply, add_special_tokens=False)["input_ids"] if tokenizer else []
                                for _, _, reply in rows],
             "answer": [q.answer for q, _, _ in rows], "item": [q.item for q, _, _ in rows]}
    return rows, batch


def weighted_totals(rewards: Sequence[Sequence], weights=None) -> list[float]:
    """Each completion's weighted reward summed over the functions (`rewards`: one list per function), a None
    counted as 0 and no weights as all 1: what the audit and the grader's per-batch rule compare."""
    weights = weights or [1.0] * len(rewards)
    return [sum(w * (r[i] or 0.0) for w, r in zip(weights, rewards)) for i in range(len(rewards[0]) if rewards else 0)]


def audit_failure(rows: list, rewards: Sequence[Sequence], weights=None) -> str | None:
    """The first crafted reply whose weighted reward (None counted as 0) is not strictly below the right answer's
    to the same question, as a message naming both; None when the right answer wins everywhere. `rewards` holds
    one list per reward function over `rows` (from `audit_batch`)."""
    totals = weighted_totals(rewards, weights)
    for start in range(0, len(rows), len(AUDIT_KINDS)):
        for offset in range(1, len(AUDIT_KINDS)):
            question, kind, reply = rows[start + offset]
            if not totals[start + offset] < totals[start]:
                return (f"Your weighted reward pays the reply {reply!r} ({kind}) {totals[start + offset]:.3g}, as much as "
                        f"the right answer {rows[start][2]!r} or more ({totals[start]:.3g}; the question asks how many "
                        f"{question.item}: {question.answer}). A policy can earn it without counting: the grader trains "
                        "only rewards that pay the right answer more than each of these replies.")
    return None


def trl_group_advantages(rewards_per_function, reward_weights, num_generations: int, scale_rewards: str = "group"):
    """TRL 1.16 `GRPOTrainer`'s advantages ("sum_then_normalize", its default), line for line: each completion's
    rewards weighted and summed over the functions (a None reward is NaN and left out of the sum; a completion
    with no reward at all is unscorable: left out of its group's mean and standard deviation, advantage 0), minus
    its group's mean, over the group's standard deviation (Bessel-corrected) + 1e-4 (`scale_rewards="group"`; "none"
    leaves it unscaled; "batch" divides by the whole batch's). `rewards_per_function` is [completions, functions],
    ordered prompt by prompt, `num_generations` each. tests/test_grpo.py checks this against a real trainer batch."""
    import torch
    from trl.trainer.utils import nanstd

    rewards_per_function = torch.as_tensor(rewards_per_function, dtype=torch.float32)
    weights = torch.as_tensor(reward_weights, dtype=torch.float32)
    if rewards_per_function.dim() != 2 or rewards_per_function.shape[1] != weights.numel():
        raise ValueError(f"rewards_per_function must be [completions, {weights.numel()} functions], got "
                         f"{list(rewards_per_function.shape)}.")
    if num_generations < 2 or rewards_per_function.shape[0] % num_generations:
        raise ValueError(f"{rewards_per_function.shape[0]} completions do not make groups of num_generations="
                         f"{num_generations} (at least 2).")
    unscorable = torch.isnan(rewards_per_function).all(dim=1)
    rewards = (rewards_per_function * weights.unsqueeze(0)).nansum(dim=1)
    rewards[unscorable] = torch.nan
    grouped = rewards.view(-1, num_generations)
    mean = torch.nanmean(grouped, dim=1).repeat_interleave(num_generations)
    if scale_rewards == "batch":
        std = nanstd(rewards).expand_as(rewards)
    elif scale_rewards in ("group", "none"):
        std = nanstd(grouped, dim=1).repeat_interleave(num_generations)
    else:
        raise ValueError(f"scale_rewards must be 'group', 'batch' or 'none', got {scale_rewards!r}.")
    advantages = rewards - mean
    if scale_rewards != "none":
        advantages = advantages / (std + 1e-4)
    return torch.nan_to_num(advantages, nan=0.0)


def zero_advantage_share(model, tokenizer, questions: Sequence[Question], generations: int = 4,
                         temperature: float = 1.0, max_new_tokens: int = COMPLETION_TOKENS, seed: int = 0) -> dict:
    """Sample `generations` replies to each question as GRPO would: the share right (the checker), and the share of
    groups whose replies are all right or all wrong (the same reward throughout: zero advantage, no gradient)."""
    from .rlhf import sample_replies

    replies = sample_replies(model, tokenizer, questions, n=generations, max_new_tokens=max_new_tokens,
                             temperature=temperature, seed=seed)
    rights = [[task_checker(q, r) for r in rs] for q, rs in zip(questions, replies)]
    return {"sampled_right": sum(map(sum, rights)) / (len(rights) * generations),
            "groups_all_right": sum(all(r) for r in rights) / len(rights),
            "groups_all_wrong": sum(not any(r) for r in rights) / len(rights),
            "replies": replies}


def success_rate(model, tokenizer, questions: Sequence[Question], max_new_tokens: int = 16,
                 batch_size: int = 64) -> dict:
    """Greedy replies to `questions` and the checker's verdict: `right` (the share the checker accepts), the judge's
    mean score, mean words, and the replies."""
    from .rlhf import judge_replies, sample_replies

    replies = sample_replies(model, tokenizer, questions, n=1, max_new_tokens=max_new_tokens, temperature=0,
                             batch_size=batch_size)
    return judge_replies(questions, replies) | {"replies": [r[0] for r in replies]}


def preset_grpo_args(preset: Preset) -> dict:
    """The `GRPOConfig` arguments the machine fixes, not the learner: `training.preset_machine_args` (precision,
    device, no activation checkpointing, a loss logged per step, nothing saved). GRPO samples its own replies, so
    no layout or row length of the SFT recipe applies."""
    from .training import preset_machine_args

    return preset_machine_args(preset)


def grpo_trainer_class(preset: Preset):
    """The GRPO trainer a preset trains with: TRL's `GRPOTrainer`, or on a CPU its subclass whose fused LM head scores
    the reply tokens only and which runs each prompt once for its group of replies, sampling and scoring
    (`training.scoring_labelled_positions_only` with `share_prompts`: the same logged numbers, tests/test_rlhf.py)."""
    from trl import GRPOTrainer

    from .training import preset_trainer_class

    return preset_trainer_class(GRPOTrainer, preset)


def rl_dataset(questions: Sequence[Question]):
    """The prompts GRPO samples from (conversational), with each question's answer and item for the reward
    functions (TRL passes the dataset's other columns to them by name)."""
    from .rlhf import rl_dataset as conversational

    return conversational(questions)


def train_grpo(model, tokenizer, questions: Sequence[Question], reward_funcs: Sequence[Callable], lora, args,
               progress: bool = True, trainer_class=None):
    """The GRPO recipe packaged (notebook 08's training cell): `trainer_class` (`grpo_trainer_class(preset)`; TRL's
    `GRPOTrainer` when None) with a new LoRA adapter, `reward_funcs` and a `GRPOConfig`, on `questions`' prompts.
    Returns (trained PEFT model in eval mode, TrainResult with the logged loss per step, the trainer's logged rows:
    reward, rewards/<function>/mean, frac_reward_zero_std, completions/mean_length per step)."""
    from trl import GRPOTrainer

    from .training import train_pairs

    trained, result, trainer = train_pairs(trainer_class or GRPOTrainer, model, tokenizer, rl_dataset(questions), lora,
                                           args, progress, reward_funcs=list(reward_funcs))
    logged = [{k: v for k, v in row.items() if k in ("step", "loss", "reward", "reward_std", "frac_reward_zero_std",
                                                     "completions/mean_length") or k.startswith("rewards/")}
              for row in trainer.state.log_history if "reward" in row]
    return trained, result, logged
