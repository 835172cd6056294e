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


def reward_scores(model, tokenizer, prompts: Sequence[str], replies: Sequence[str], batch_size: int = 32,
                  share_prompts: bool = True) -> list[float]:
    """The reward model's score of each reply to its prompt (no gradient).

    `share_prompts`: replies to the same prompt (RLOO's group of samples) run their prompt once (`shared_prompt_outputs`);
    False runs each conversation whole, right padded (the plain reference the tests compare with).
    """
    import torch

    if len(prompts) != len(replies):
        raise ValueError(f"one reply per prompt: got {len(prompts)} prompts and {len(replies)} replies.")
    texts = reward_texts(tokenizer, prompts, replies)
    if share_prompts:
        return shared_prompt_outputs(model, tokenizer, texts, groups_by_prompt(prompts), batch_size)[0]
    device = next(model.parameters()).device
    scores = []
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


def groups_by_prompt(prompts: Sequence[str]) -> list[list[int]]:
    """Indices of equal prompts, grouped in order of first appearance."""
    groups: dict[str, list[int]] = {}
    for index, prompt in enumerate(prompts):
        groups.setdefault(prompt, []).append(index)
    return list(groups.values())


def shared_prompt_outputs(model, tokenizer, texts: Sequence[str], groups: Sequence[Sequence[int]], batch_size: int = 32,
                          features: bool = False):
    """The reward model's score of each conversation in `texts` (and, with `features`, its last-layer state at the
    last token, what the score head reads), each group of conversations that share a prompt running it once.

    A group's common tokens (its prompt, up to the reply) run once, left padded, positions counted from the first
    real token; the cache is copied for each conversation of the group, whose rest runs on top of it at the same
    positions; the score is read at each conversation's last token that is not padding, as a whole forward pass
    reads it (tests/test_reward.py checks that the two agree). Each conversation keeps at least one token of its
    own. Groups are batched (at most `batch_size` conversations, at least one group) in order of their longest
    conversation, so short ones are not padded to the width of long ones; results come back in `texts`' order.
    The tokens every group of a batch starts with (the chat template's system turn, the task's instruction) run
    once for the whole batch, their cache repeated for each group; the conversations' own parts run in length
    buckets (`evaluation.length_buckets`: the split with the fewest padded tokens, counting a cost per call), so a
    short chosen reply is rarely padded to its rejected twin's length.
    Returns (scores, features or None).
    """
    import torch
    from transformers import DynamicCache

    from .evaluation import length_buckets, shared_prefix_length

    if sorted(i for group in groups for i in group) != list(range(len(texts))):
        raise ValueError(f"groups must hold each of the {len(texts)} conversations' indices exactly once.")
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id
    encoded = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    batches, current, size = [], [], 0
    for g in sorted(range(len(groups)), key=lambda g: max(len(encoded[i]) for i in groups[g])):
        if current and size + len(groups[g]) > batch_size:
            batches.append(current)
            current, size = [], 0
        current.append(g)
        size += len(groups[g])
    batches += [current] if current else []
    scores, states = [0.0] * len(texts), [None] * len(texts)
    for batch in batches:
        # each group's common start, and the whole batch's; each conversation keeps at least one token of its own
        shared = [shared_prefix_length([encoded[i] for i in groups[g]]) for g in batch]
        common = min(min(shared), shared_prefix_length([encoded[groups[g][0]] for g in batch]))
        width = max(shared) - common
        prefix = torch.full((len(batch), width), pad_id, dtype=torch.long)
        prefix_mask = torch.zeros_like(prefix)
        for row, (g, n) in enumerate(zip(batch, shared)):
            if n > common:
                prefix[row, width - n + common:] = torch.tensor(encoded[groups[g][0]][common:n])
                prefix_mask[row, width - n + common:] = 1
        members = [(row, i) for row, g in enumerate(batch) for i in groups[g]]
        rows = torch.tensor([row for row, _ in members])
        rests = [encoded[i][shared[row]:] for row, i in members]
        rest_width = max(map(len, rests))
        rest = torch.full((len(rests), rest_width), pad_id, dtype=torch.long)
        rest_mask = torch.zeros_like(rest)
        for k, seq in enumerate(rests):
            rest[k, :len(seq)], rest_mask[k, :len(seq)] = torch.tensor(seq), 1
        head_mask = torch.ones((len(batch), common), dtype=torch.long)
        cache = DynamicCache(config=base.config)
        with torch.no_grad():
            if common:
                base.model(input_ids=torch.tensor([encoded[groups[batch[0]][0]][:common]], device=device),
                           position_ids=torch.arange(common, device=device)[None], past_key_values=cache, use_cache=True)
                cache.batch_repeat_interleave(len(batch))
            if width:
                base.model(input_ids=prefix.to(device), attention_mask=torch.cat([head_mask, prefix_mask], 1).to(device),
                           position_ids=(common + prefix_mask.cumsum(-1) - 1).clamp(min=common).to(device),
                           past_key_values=cache, use_cache=True)
            if common or width:
                cache.batch_select_indices(rows.to(device))
            positions = common + prefix_mask.sum(-1)[rows][:, None] + torch.arange(rest_width)[None]
            mask = torch.cat([head_mask[rows], prefix_mask[rows], rest_mask], 1)
            for bucket in length_buckets([len(r) for r in rests]):  # each bucket padded to its own longest rest
                own, picked = max(len(rests[k]) for k in bucket), torch.tensor(bucket)
                past = None
                if common or width:
                    past, index = DynamicCache(config=base.config), picked.to(device)
                    for layer, kv in enumerate(cache.layers):
                        past.update(kv.keys[index], kv.values[index], layer)
                out = model(input_ids=rest[picked, :own].to(device),
                            attention_mask=mask[picked, :mask.shape[1] - rest_width + own].to(device),
                            position_ids=positions[picked, :own].to(device), past_key_values=past, use_cache=False,
                            output_hidden_states=features)
                for j, (k, score) in enumerate(zip(bucket, out.logits.float().squeeze(-1).tolist())):
                    scores[members[k][1]] = score
                    if features:
                        states[members[k][1]] = out.hidden_states[-1][j, len(rests[k]) - 1].float()
    return scores, (torch.stack(states) if features else None)


def pair_scores(model, tokenizer, pairs: Sequence[PreferencePair], batch_size: int = 32) -> tuple[list[float], list[float]]:
    """The reward of each pair's chosen and rejected reply, their shared prompt run once (`shared_prompt_outputs`,
    each pair a group of two; about 40 % fewer tokens here)."""
    texts = [text for p in pairs for text in reward_texts(tokenizer, [p.prompt] * 2, [p.chosen, p.rejected])]
    scores, _ = shared_prompt_outputs(model, tokenizer, texts, [[2 * i, 2 * i + 1] for i in range(len(pairs))], batch_size)
    return scores[0::2], scores[1::2]


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


def paired_prompt_width(input_ids, attention_mask) -> int:
    """The columns every pair of a `RewardTrainer` batch shares (rows [chosen..., rejected...], right padded): the
    shortest common start of a pair's two rows, capped at the shortest row's length less one so that each row keeps
    a token of its own; 0 when the rows do not come in pairs."""
    import torch

    rows = input_ids.size(0)
    if rows < 2 or rows % 2:
        return 0
    n, real = rows // 2, attention_mask.bool()
    same = (input_ids[:n] == input_ids[n:]) & real[:n] & real[n:]
    per_pair = torch.where(same.all(1), same.size(1), torch.argmin(same.int(), dim=1))
    return max(0, int(min(per_pair.min(), attention_mask.sum(1).min() - 1)))


def reward_trainer_class(preset: Preset):
    """The reward trainer a preset trains with: TRL's `RewardTrainer`, or on a preset that shares prompt computation
    (the CPU's `share_prompt_forward`) its subclass that runs each pair's prompt once for its chosen and its rejected
    reply (`training.shared_prompt_backbone` over `paired_prompt_width`'s columns): the same scores, loss and
    gradients up to rounding (tests/test_reward.py), about a third fewer tokens through the model on 06's pairs. A
    batch with margins (`preference_dataset(pairs, margins)`) runs whole: TRL passes `margin` on to the model's
    forward, which `shared_prompt_backbone` does not take."""
    import contextlib

    from trl import RewardTrainer

    if not preset.share_prompt_forward:
        return RewardTrainer
    from .training import shared_prompt_backbone

    class SharedPromptRewardTrainer(RewardTrainer):
        backbone_positions = None  # a list to collect each backbone call's (rows, columns): tests, benchmarks

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            width = paired_prompt_width(inputs["input_ids"], inputs["attention_mask"])
            with shared_prompt_backbone(model, width, self.backbone_positions) if width else contextlib.nullcontext():
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    return SharedPromptRewardTrainer


def train_reward_model(model, tokenizer, pairs: Sequence[PreferencePair], lora, args, preset: Preset,
                       margins: Sequence[float] | None = None, progress: bool = True):
    """The packaged mirror of notebook 06's training cell: `reward_trainer_class(preset)` (TRL's `RewardTrainer`) with
    a LoraConfig and a RewardConfig.

    `model` is `load_reward_model`'s; returns (trained model, TrainResult).
    """
    from .training import train_pairs

    trained, result, _ = train_pairs(reward_trainer_class(preset), model, tokenizer, preference_dataset(pairs, margins),
                                     lora, args, progress)
    return trained, result
