"""Reward models (notebook 06): the embedded model with a scalar head, trained with TRL's `RewardTrainer`.

Notebook 06 builds the recipe in view (PEFT's `LoraConfig` with `task_type="SEQ_CLS"`, TRL's `RewardConfig`,
`RewardTrainer`); this module holds the instruments around it: the model with its score head, the data in
TRL's preference format, the machine's `RewardConfig` arguments, scores and pairwise accuracy by pair kind,
and `train_reward_model`, the packaged mirror of the notebook's training cell that the grader trains with.
"""

from __future__ import annotations

from collections.abc import Sequence

from .preferences import PAIR_KINDS, REWARD_KINDS, PreferencePair, make_pairs, preference_splits
from .presets import Preset
from .training import preset_sft_args


REWARD_STEP_BUDGET = 40  # Exercise 6.2: most optimizer steps a graded reward model may train
# an evaluation split: 24 pairs of each graded kind (preferences.REWARD_KINDS), 9 of each other kind
EVAL_KINDS = tuple(REWARD_KINDS) * 8 + tuple(k for k in PAIR_KINDS if k not in REWARD_KINDS) * 3
REWARD_EVAL_PAIRS = 90


def load_reward_model(model: str = "embedded", device: str = "cpu", seed: int = 0):
    """The base model as a sequence classifier with one output: its reward for a whole conversation.

    `AutoModelForSequenceClassification` keeps the pretrained decoder and replaces the language-model head with
    a linear `score` head (576 -> 1), drawn from `seed`. The reward is read at the last token that is not padding,
    so the model's config must know the pad token.
    """
    import logging

    import torch
    from transformers import AutoModelForSequenceClassification

    from .models import _quiet_transformers, load_tokenizer, resolve_model_dir

    _quiet_transformers()
    torch.manual_seed(seed)
    scorer = AutoModelForSequenceClassification.from_pretrained(resolve_model_dir(model), num_labels=1,
                                                                dtype=torch.float32)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    scorer.config.pad_token_id = load_tokenizer(model).pad_token_id
    return scorer.to(device).eval()


def reward_pairs(kinds: Sequence[str] = PAIR_KINDS, n_train: int = 400, split: str = "train", n_eval: int = 150,
                 heldout_seed: int | None = None, seed: int = 0) -> list[PreferencePair]:
    """Pairs of the given kinds (a kind named twice gets twice the share) on one split of `preference_splits`.

    "train" has `n_train` questions, "validation" and "heldout" (with the grader's seed) `n_eval` each, none of
    them among the first `n_train` training questions (pass the `n_train` that training used); a split's pairs
    are drawn with `seed` (the kinds in turn, so every kind is present once n >= len(kinds)).
    """
    splits = preference_splits(n_train, n_eval, heldout_seed)
    if split not in splits:
        raise ValueError(f"split must be one of {list(splits)}, got {split!r}"
                         + (" (the held-out split needs the grader's seed)" if split == "heldout" else ""))
    return make_pairs(splits[split], seed, tuple(kinds))


def preference_dataset(pairs: Sequence[PreferencePair], margins: Sequence[float] | None = None):
    """TRL's conversational preference format (prompt, chosen, rejected; a `margin` column when given)."""
    from datasets import Dataset

    if margins is not None and len(margins) != len(pairs):
        raise ValueError(f"margins must have one value per pair: {len(margins)} for {len(pairs)} pairs.")
    rows = []
    for i, pair in enumerate(pairs):
        if not isinstance(pair, PreferencePair):
            raise TypeError(f"pair {i} must be a PreferencePair, got {type(pair).__name__}.")
        rows.append(pair.conversational() | ({"margin": float(margins[i])} if margins is not None else {}))
    return Dataset.from_list(rows)


def preset_reward_args(preset: Preset) -> dict:
    """The `RewardConfig` arguments the machine fixes, not the learner: `preset_sft_args`'s, with shuffled pairs."""
    return preset_sft_args(preset, "padded")


def reward_texts(tokenizer, prompts: Sequence[str], replies: Sequence[str]) -> list[str]:
    """Each (prompt, reply) as the conversation the reward model reads, rendered by the chat template."""
    return [tokenizer.apply_chat_template([{"role": "user", "content": p}, {"role": "assistant", "content": r}],
                                          tokenize=False) for p, r in zip(prompts, replies)]


def reward_scores(model, tokenizer, prompts: Sequence[str], replies: Sequence[str], batch_size: int = 32) -> list[float]:
    """The reward model's score of each reply to its prompt (no gradient)."""
    import torch

    if len(prompts) != len(replies):
        raise ValueError(f"one reply per prompt: got {len(prompts)} prompts and {len(replies)} replies.")
    device = next(model.parameters()).device
    scores = []
    texts = reward_texts(tokenizer, prompts, replies)
    side, tokenizer.padding_side = tokenizer.padding_side, "right"
    try:
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True,
                              add_special_tokens=False).to(device)
            with torch.no_grad():
                scores += model(**batch).logits.float().squeeze(-1).tolist()
    finally:
        tokenizer.padding_side = side
    return scores


def pair_scores(model, tokenizer, pairs: Sequence[PreferencePair], batch_size: int = 32) -> tuple[list[float], list[float]]:
    """The reward of each pair's chosen and rejected reply, their shared prompt run once.

    The two conversations of a pair have the same tokens up to the reply. That prefix runs once per pair (left
    padded, positions counted from its first real token) and its cache is copied for the two replies, which run
    on top of it at the same positions; the reward is read at each reply's last token that is not padding, as
    `reward_scores` reads it (tests/test_reward.py checks that the two agree). About 40 % fewer tokens here. Pairs
    are batched in order of their longer conversation, so a batch of short replies is not padded to the width of
    a padded one (scores come back in the pairs' order).
    """
    import torch
    from transformers import DynamicCache

    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id
    chosen_texts = reward_texts(tokenizer, [p.prompt for p in pairs], [p.chosen for p in pairs])
    rejected_texts = reward_texts(tokenizer, [p.prompt for p in pairs], [p.rejected for p in pairs])
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    encoded = [(encode(c), encode(r)) for c, r in zip(chosen_texts, rejected_texts)]
    order = sorted(range(len(pairs)), key=lambda i: max(map(len, encoded[i])))
    chosen, rejected = [0.0] * len(pairs), [0.0] * len(pairs)
    per_batch = max(1, batch_size // 2)  # pairs per batch: two conversations each
    for start in range(0, len(pairs), per_batch):
        batch = order[start:start + per_batch]
        ids = [encoded[i] for i in batch]
        shared = []
        for a, b in ids:
            n = 0
            limit = min(len(a), len(b)) - 1  # each reply keeps at least one token of its own
            while n < limit and a[n] == b[n]:
                n += 1
            shared.append(n)
        width = max(shared)
        prefix = torch.full((len(ids), width), pad_id, dtype=torch.long)
        prefix_mask = torch.zeros_like(prefix)
        for row, ((a, _), n) in enumerate(zip(ids, shared)):
            if n:
                prefix[row, width - n:], prefix_mask[row, width - n:] = torch.tensor(a[:n]), 1
        rests = [seq[n:] for (a, b), n in zip(ids, shared) for seq in (a, b)]  # chosen, rejected, chosen, ...
        rest_width = max(map(len, rests))
        rest = torch.full((len(rests), rest_width), pad_id, dtype=torch.long)
        rest_mask = torch.zeros_like(rest)
        for row, seq in enumerate(rests):
            rest[row, :len(seq)], rest_mask[row, :len(seq)] = torch.tensor(seq), 1
        cache = DynamicCache(config=base.config)
        with torch.no_grad():
            if width:
                base.model(input_ids=prefix.to(device), attention_mask=prefix_mask.to(device),
                           position_ids=(prefix_mask.cumsum(-1) - 1).clamp(min=0).to(device), past_key_values=cache,
                           use_cache=True)
                cache.batch_repeat_interleave(2)
            lengths = prefix_mask.sum(-1).repeat_interleave(2)
            positions = lengths[:, None] + torch.arange(rest_width)[None]
            scores = model(input_ids=rest.to(device),
                           attention_mask=torch.cat([prefix_mask.repeat_interleave(2, 0), rest_mask], 1).to(device),
                           position_ids=positions.to(device), past_key_values=cache if width else None,
                           use_cache=False).logits.float().squeeze(-1).tolist()
        for i, c, r in zip(batch, scores[0::2], scores[1::2]):
            chosen[i], rejected[i] = c, r
    return chosen, rejected


def pairwise_accuracy(model, tokenizer, pairs: Sequence[PreferencePair], batch_size: int = 32) -> dict:
    """Share of pairs whose chosen reply the model scores higher, overall and by kind, with the margins."""
    if not pairs:
        raise ValueError("pairwise_accuracy needs at least one pair.")
    chosen, rejected = pair_scores(model, tokenizer, pairs, batch_size)
    right = [c > r for c, r in zip(chosen, rejected)]
    kinds = {}
    for pair, ok in zip(pairs, right):
        kinds.setdefault(pair.kind, []).append(ok)
    return {"accuracy": sum(right) / len(right), "by_kind": {k: sum(v) / len(v) for k, v in kinds.items()},
            "chosen": chosen, "rejected": rejected, "right": right, "n_pairs": len(pairs)}


def load_reward_adapter(folder, model: str = "embedded", device: str = "cpu"):
    """A reward model saved by `save_reward_adapter` (or `trainer.save_model`): the base scorer with its LoRA
    adapter and trained score head. A folder without a sequence-classification LoRA adapter is an error."""
    import json
    from pathlib import Path

    from peft import PeftModel

    config = Path(folder) / "adapter_config.json"
    if not config.exists():
        raise FileNotFoundError(f"No adapter in {folder}: expected adapter_config.json (a saved LoRA reward model).")
    saved = json.loads(config.read_text())
    if saved.get("peft_type") != "LORA" or saved.get("task_type") != "SEQ_CLS":
        raise ValueError(f"{config} must be a LoRA adapter with task_type 'SEQ_CLS' (a reward model), got "
                         f"peft_type={saved.get('peft_type')!r}, task_type={saved.get('task_type')!r}.")
    return PeftModel.from_pretrained(load_reward_model(model, device), str(folder)).eval()


def save_reward_adapter(model, folder) -> None:
    """The trained reward model's adapter and score head (PEFT saves the head as a module to save)."""
    model.save_pretrained(str(folder))


def train_reward_model(model, tokenizer, pairs: Sequence[PreferencePair], lora, args, preset: Preset,
                       margins: Sequence[float] | None = None, progress: bool = True):
    """The packaged mirror of notebook 06's training cell: `RewardTrainer` with a LoraConfig and a RewardConfig.

    `model` is `load_reward_model`'s; returns (trained model, TrainResult).
    """
    from trl import RewardTrainer

    from .training import train_pairs

    trained, result, _ = train_pairs(RewardTrainer, model, tokenizer, preference_dataset(pairs, margins), lora, args,
                                     progress)
    return trained, result
