"""Preference data with a judge that can be checked (notebooks 06 and 07).

The behaviour: answer a question about a short inventory list **correctly and briefly**. A programmatic judge
is the ground truth: 1.0 for the right count in a reply of at most `CONCISE_WORDS` words, 0.5 for the right
count buried in padding, 0.0 for a wrong or missing count. No LLM judges anything.

Pairs (prompt, chosen, rejected) come in kinds that isolate one property each, so a learned reward model's
mistakes can be read off by kind:
- `padded`: concise right vs padded right (the judge prefers brevity);
- `wrong`: concise right vs concise wrong (correctness);
- `padded_wrong`: padded right vs concise wrong (correctness beats brevity: a reward model that learned
  "shorter is better" gets these wrong, the known bias notebook 06's reward hacking starts from);
- `no_count`: a brief right reply vs a *briefer* one with no count at all (an answer needs its number; a
  reward model that only learned "shorter is better" gets these wrong);
- `echo`: a padded right reply vs the list restated instead of an answer, which is shorter (the right number
  is in it, among the others; again brevity points the wrong way).
Every pair is checked against the judge when it is made (the chosen reply scores strictly higher).
"""

from __future__ import annotations

import dataclasses
import random
import re

ITEMS = ("apples", "pears", "plums", "lemons", "cups", "plates", "forks", "spoons", "pens", "books", "boxes",
         "chairs", "lamps", "keys", "coins", "shells", "stones", "cards", "bells", "hats")
INSTRUCTION = "Answer the question about the list."
CONCISE_WORDS = 6  # a reply of at most this many words counts as brief
PAIR_KINDS = ("padded", "wrong", "padded_wrong", "no_count", "echo")
REWARD_KINDS = ("padded", "no_count", "echo")  # what a small reward model must rank (Exercise 6.2's held-out kinds)
OPENERS = ("Great question! ", "Sure, I can help with that. ", "Let me look at the list carefully. ",
           "Thanks for asking! ", "Of course! ")
CLOSERS = (" I hope this helps!", " Let me know if you have any other questions.", " Happy to help further.",
           " Feel free to ask about the other items too.")


@dataclasses.dataclass(frozen=True)
class Question:
    """One prompt and the count that answers it."""

    prompt: str
    item: str
    answer: int


@dataclasses.dataclass(frozen=True)
class PreferencePair:
    prompt: str
    chosen: str
    rejected: str
    kind: str

    def conversational(self) -> dict:
        """TRL's conversational preference format (RewardTrainer, DPOTrainer): prompt, chosen, rejected."""
        return {"prompt": [{"role": "user", "content": self.prompt}],
                "chosen": [{"role": "assistant", "content": self.chosen}],
                "rejected": [{"role": "assistant", "content": self.rejected}]}


def make_question(rng: random.Random) -> Question:
    """A list of 3-5 items with counts 2-19, and a question about one of them."""
    items = rng.sample(ITEMS, rng.randint(3, 5))
    counts = rng.sample(range(2, 20), len(items))  # distinct counts: a wrong reply cannot be right by accident
    asked = rng.randrange(len(items))
    listing = "\n".join(f"- {item}: {count}" for item, count in zip(items, counts))
    return Question(f"{INSTRUCTION}\n{listing}\nHow many {items[asked]} are there?", items[asked], counts[asked])


def make_questions(n: int, seed: int) -> list[Question]:
    """`n` questions with distinct prompts, drawn with `seed`."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng, found = random.Random(seed), {}
    while len(found) < n:
        q = make_question(rng)
        found.setdefault(q.prompt, q)
    return list(found.values())


def concise_reply(question: Question, count: int, rng: random.Random) -> str:
    return rng.choice((f"{count}", f"{count} {question.item}.", f"There are {count}."))


def padded_reply(question: Question, count: int, rng: random.Random) -> str:
    return (f"{rng.choice(OPENERS)}I went through every line of the list you gave me. After checking it, "
            f"the number of {question.item} is {count}.{rng.choice(CLOSERS)}")


NO_COUNT = ("Some.", "Few.", "Unsure.", "Several.", "Many.")  # shorter than any brief right reply


def no_count_reply(question: Question, rng: random.Random) -> str:
    return rng.choice(NO_COUNT)


def echo_reply(question: Question, rng: random.Random) -> str:
    listing = question.prompt.split("\n")[1:-1]
    return rng.choice(("The list says:\n", "Here is the list:\n", "")) + "\n".join(listing)


def wrong_count(question: Question, rng: random.Random) -> int:
    """A count other than the answer: another item's count from the list when there is one (a plausible mistake)."""
    others = [int(c) for c in re.findall(r": (\d+)", question.prompt) if int(c) != question.answer]
    return rng.choice(others)


def reply_numbers(reply: str) -> list[int]:
    return [int(n) for n in re.findall(r"\d+", reply)]


def judge(question: Question, reply: str) -> float:
    """The ground truth: 1.0 right and brief, 0.5 right but padded, 0.0 wrong (any other number, or none)."""
    if not isinstance(reply, str):
        raise TypeError(f"a reply must be a string, got {type(reply).__name__}")
    numbers = reply_numbers(reply)
    if not numbers or any(n != question.answer for n in numbers):
        return 0.0
    return 1.0 if len(reply.split()) <= CONCISE_WORDS else 0.5


def make_pairs(questions: list[Question], seed: int, kinds: tuple[str, ...] = PAIR_KINDS) -> list[PreferencePair]:
    """One pair per question, the kinds in turn (a kind named twice gets twice the share); each checked
    against the judge."""
    if isinstance(kinds, str) or not kinds or any(k not in PAIR_KINDS for k in kinds):
        raise ValueError(f"kinds must be a non-empty sequence of names from {PAIR_KINDS} (repeats allowed), "
                         f"got {kinds!r}")
    rng, pairs = random.Random(seed), []
    for i, q in enumerate(questions):
        kind = kinds[i % len(kinds)]
        if kind == "padded":
            chosen, rejected = concise_reply(q, q.answer, rng), padded_reply(q, q.answer, rng)
        elif kind == "wrong":
            chosen, rejected = concise_reply(q, q.answer, rng), concise_reply(q, wrong_count(q, rng), rng)
        elif kind == "padded_wrong":
            chosen, rejected = padded_reply(q, q.answer, rng), concise_reply(q, wrong_count(q, rng), rng)
        elif kind == "no_count":
            chosen, rejected = rng.choice((f"{q.answer} {q.item}.", f"There are {q.answer}.")), no_count_reply(q, rng)
        else:
            chosen, rejected = padded_reply(q, q.answer, rng), echo_reply(q, rng)
        if not judge(q, chosen) > judge(q, rejected):
            raise AssertionError(f"pair {i} ({kind}) does not follow the judge: {chosen!r} vs {rejected!r}")
        pairs.append(PreferencePair(q.prompt, chosen, rejected, kind))
    return pairs


def preference_splits(n_train: int, n_eval: int, heldout_seed: int | None = None) -> dict[str, list[Question]]:
    """Questions for training, a public validation split and, with the grader's seed, a held-out split; disjoint."""
    train = make_questions(n_train, 6060)
    validation = [q for q in make_questions(3 * n_eval, 6061) if q.prompt not in {t.prompt for t in train}][:n_eval]
    splits = {"train": train, "validation": validation}
    if heldout_seed is not None:
        seen = {q.prompt for q in train + validation}
        splits["heldout"] = [q for q in make_questions(3 * n_eval, heldout_seed) if q.prompt not in seen][:n_eval]
    return splits


def reward_trainer_loss(rewards_chosen, rewards_rejected, margin=None, center_rewards_coefficient=None):
    """TRL `RewardTrainer.compute_loss` on given rewards: the library's own result a from-scratch Bradley-Terry
    loss is compared with. A stand-in model returns the rewards as logits (chosen first, then rejected, as
    TRL's collator stacks them); the trainer's own method computes the loss."""
    import types
    from collections import defaultdict

    import torch
    from trl import RewardTrainer

    rewards = torch.cat([torch.as_tensor(rewards_chosen, dtype=torch.float32),
                         torch.as_tensor(rewards_rejected, dtype=torch.float32)])
    n = rewards.shape[0]

    class Scores(torch.nn.Module):
        def forward(self, **_):
            return types.SimpleNamespace(logits=rewards.unsqueeze(-1))

    trainer = RewardTrainer.__new__(RewardTrainer)  # only compute_loss is used: no model, data or accelerator set-up
    trainer.model = Scores()
    trainer.args = types.SimpleNamespace(center_rewards_coefficient=center_rewards_coefficient)
    trainer.accelerator = types.SimpleNamespace(gather=lambda x: x, gather_for_metrics=lambda x: x)
    trainer._tp_size, trainer._total_train_tokens = 1, 0
    trainer._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
    inputs = {"input_ids": torch.zeros(n, 1, dtype=torch.long), "attention_mask": torch.ones(n, 1, dtype=torch.long)}
    if margin is not None:
        inputs["margin"] = torch.as_tensor(margin, dtype=torch.float32)
    return trainer.compute_loss(trainer.model, inputs)
