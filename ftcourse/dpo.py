"""DPO (notebook 07): TRL's own DPO loss on given log-probabilities, and the log-probabilities of replies computed
from scratch as `DPOTrainer` tokenizes them, under the policy or under the reference (the same model with its LoRA
adapter switched off).

Notebook 07 (not written yet: issue 15) will build the recipe in view (PEFT's `LoraConfig`, TRL's `DPOConfig` and
`DPOTrainer`); this module holds the instruments around it:
- `dpo_trainer_loss`: `DPOTrainer`'s loss and the rewards it logs, computed by the trainer's own method on
  sequence log-probabilities given instead of a model's: the library's result a from-scratch DPO loss is checked
  against (as `preferences.reward_trainer_loss` does for the Bradley-Terry loss);
- `reply_logps` / `pair_logps`: the summed log-probability of each reply given its prompt, tokenized as
  `DPOTrainer` tokenizes a conversational pair; `reference=True` reads them with the adapter switched off, the
  reference `DPOTrainer` uses for a PEFT model, so no second copy of the model is loaded;
- `implicit_rewards`: DPO's reward, beta times the policy's log-ratio to the reference, for each reply of a pair;
- `build_pairs` / `checked_pairs`: Exercise 7.2's pairs, one per question from the learner's `dpo_pair`, each
  checked (strings, lengths, the chosen reply scored higher by the judge) with the row named. (The pairs that work,
  in the model's own style of reply, are the exercise's answer: they live in scripts/measure_dpo.py and the
  solution, not here.)
- `dpo_trainer_class`: the trainer a preset trains with (on a CPU, `DPOTrainer` with its LM head run on the reply
  tokens only: the same numbers, about twice as fast);
- `train_dpo`: the DPO recipe packaged (`DPOTrainer` with a `LoraConfig` and a `DPOConfig`), for
  scripts/measure_dpo.py until notebook 07 teaches it in view; then it is that cell's mirror;
- `policy_scores`: a policy's greedy replies to questions, the judge's score of them, and their log-ratio to the
  reference (how far the policy has drifted on what it says).

tests/test_dpo.py checks `pair_logps` and `dpo_trainer_loss` together against a real `DPOTrainer` batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from .preferences import PreferencePair, Question, judge
from .presets import Preset

if TYPE_CHECKING:
    import peft
    import torch
    import trl

    from .training import TrainResult


# ---------------------------------------------------------------- the library's loss on given log-probabilities

def _as_vector(name: str, values, n: int | None = None) -> "torch.Tensor":
    import torch

    tensor = torch.as_tensor(values)
    if not torch.is_floating_point(tensor):
        tensor = tensor.float()
    if tensor.dim() != 1:
        raise ValueError(f"{name} must be a 1-D tensor with one value per pair, got shape {tuple(tensor.shape)}: "
                         "pass the summed log-probability of each reply, not per-token values.")
    if n is not None and tensor.shape[0] != n:
        raise ValueError(f"{name} has {tensor.shape[0]} values, chosen_logps has {n}: pass one value per pair in each.")
    if bool((tensor.detach() > 1e-4).any()):
        row = int((tensor.detach() > 1e-4).nonzero()[0])
        raise ValueError(f"{name}[{row}] is {float(tensor[row]):.4g}: a log-probability is <= 0. Pass log pi(y|x) "
                         "(the sum of the reply's token log-probabilities), not a loss or a probability.")
    return tensor


def _dpo_default(name: str):
    """DPOConfig's default for one field: what DPOTrainer.__init__ copies from a config left as it is."""
    import dataclasses

    from trl import DPOConfig

    field = DPOConfig.__dataclass_fields__[name]
    return field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default


def dpo_trainer_loss(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps,
                     beta: float = 0.1) -> tuple["torch.Tensor", dict[str, float]]:
    """TRL `DPOTrainer`'s loss (standard DPO: sigmoid loss, reverse KL) on given sequence log-probabilities,

        loss = mean over pairs of -log sigmoid(beta * [(log pi(y_c|x) - log pi_ref(y_c|x))
                                                       - (log pi(y_r|x) - log pi_ref(y_r|x))]),

    and the metrics the trainer logs for that batch (`rewards/chosen`, `rewards/rejected`, `rewards/margins`,
    `rewards/accuracies`, `logps/chosen`, `logps/rejected`). Each argument is a 1-D tensor, one value per pair.

    The trainer's own `_compute_loss` runs, with the reference log-probabilities given as precomputed (TRL's
    `precompute_ref_log_probs`) and a stand-in model whose per-token log-probabilities are each reply's sum on a
    single completion token. The loss keeps the graph of the policy's log-probabilities given, so gradients can be
    compared too.
    """
    import types
    from collections import defaultdict

    import torch
    from trl import DPOTrainer

    chosen = _as_vector("chosen_logps", chosen_logps)
    n = chosen.shape[0]
    rejected = _as_vector("rejected_logps", rejected_logps, n)
    ref_chosen = _as_vector("ref_chosen_logps", ref_chosen_logps, n).detach()
    ref_rejected = _as_vector("ref_rejected_logps", ref_rejected_logps, n).detach()
    if n == 0:
        raise ValueError("dpo_trainer_loss needs at least one pair.")
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}.")
    log_probs = torch.cat([chosen, rejected]).unsqueeze(-1)  # the batch is [chosen..., rejected...], as TRL's collator

    class SequenceLogps(torch.nn.Module):
        def forward(self, **_):
            zeros = torch.zeros_like(log_probs.detach())
            return types.SimpleNamespace(log_probs=log_probs, entropy=zeros, mean_logits=zeros,
                                         is_top1=torch.zeros_like(zeros, dtype=torch.bool))

    trainer = DPOTrainer.__new__(DPOTrainer)  # only the loss is used: no model, data or accelerator set-up
    trainer.model = SequenceLogps().train()
    trainer.args = types.SimpleNamespace(gradient_checkpointing_kwargs=None)
    trainer.accelerator = types.SimpleNamespace(device=log_probs.device, gather=lambda x: x,
                                                gather_for_metrics=lambda x: x)
    # what DPOTrainer.__init__ copies from a DPOConfig left at its defaults (standard DPO), references given
    trainer.beta, trainer.loss_types = float(beta), list(_dpo_default("loss_type"))
    trainer.loss_weights = _dpo_default("loss_weights") or [1.0] * len(trainer.loss_types)
    trainer.f_divergence_type, trainer.ld_alpha = _dpo_default("f_divergence_type"), _dpo_default("ld_alpha")
    trainer.label_smoothing, trainer.use_weighting = _dpo_default("label_smoothing"), _dpo_default("use_weighting")
    if trainer.loss_types != ["sigmoid"] or trainer.f_divergence_type != "reverse_kl" or trainer.use_weighting:
        raise RuntimeError(f"This TRL's DPOConfig defaults are not standard DPO ({trainer.loss_types}, "
                           f"{trainer.f_divergence_type}): check ftcourse.dpo against the installed TRL.")
    trainer.aux_loss_enabled, trainer.precompute_ref_logps = False, True
    trainer._tp_size, trainer._total_train_tokens = 1, 0
    trainer._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
    inputs = {"input_ids": torch.zeros(2 * n, 2, dtype=torch.long),
              "attention_mask": torch.ones(2 * n, 2, dtype=torch.long),
              "completion_mask": torch.tensor([[0, 1]] * (2 * n)),
              "ref_chosen_logps": ref_chosen, "ref_rejected_logps": ref_rejected}
    loss = trainer.compute_loss(trainer.model, inputs)
    metrics = {key: values[-1] for key, values in trainer._metrics["train"].items()
               if key.startswith(("rewards/", "logps/"))}
    return loss, metrics


# ---------------------------------------------------------------- log-probabilities of replies, from scratch

MAX_LENGTH = 1024  # DPOConfig.max_length's default: longer rows would be truncated by the trainer
BATCH_SIZE = 16  # sequences per forward pass when reading log-probabilities

def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def reply_tokens(tokenizer, prompt: str, *replies: str) -> tuple[list[int], list[list[int]]]:
    """The prompt's tokens and each reply's, as `DPOTrainer` tokenizes a conversational example: the chat template of
    the user turn with the generation prompt, and of the whole conversation with each reply; the replies start at
    the shortest of the prompt's common prefixes with the conversations (for a pair, TRL's cut), which is the
    whole prompt when the template renders it the same way in both. A reply ends with the template's end-of-turn
    tokens, which are trained too."""
    for name, text in (("prompt", prompt), *((f"reply {j}", r) for j, r in enumerate(replies))):
        if not isinstance(text, str):
            raise TypeError(f"{name} must be a string, got {type(text).__name__}.")
    user = [{"role": "user", "content": prompt}]
    prompt_ids = tokenizer.apply_chat_template(user, add_generation_prompt=True, tokenize=True,
                                               return_dict=True)["input_ids"]
    full = [tokenizer.apply_chat_template(user + [{"role": "assistant", "content": r}], tokenize=True,
                                          return_dict=True)["input_ids"] for r in replies]
    start = min(_common_prefix(prompt_ids, ids) for ids in full)
    return list(prompt_ids[:start]), [list(ids[start:]) for ids in full]


def _is_peft(model) -> bool:
    from accelerate.utils import is_peft_model

    return is_peft_model(model)


def _summed_logps(model, tokenizer, encoded: list[tuple[list[int], list[int]]], batch_size: int,
                  reference: bool) -> "torch.Tensor":
    import contextlib

    import torch
    from transformers import DynamicCache

    from .evaluation import shared_prefix_length

    if reference:
        from trl.trainer.utils import use_adapter

        context = use_adapter(model, adapter_name="ref" if "ref" in model.peft_config else None)
    else:
        context = contextlib.nullcontext()
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = torch.zeros(len(encoded), dtype=torch.float32)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a PEFT model's LoRA layers stay in
    backbone, head = getattr(base, base.base_model_prefix), base.get_output_embeddings()
    # rows in order of length (less padding in each batch); the tokens a batch's rows all start with (the chat
    # template's system turn, the task's instruction) run once, their cache repeated for each row
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]) + len(encoded[i][1]))
    with context, torch.no_grad():
        for start in range(0, len(encoded), batch_size):
            picked = order[start:start + batch_size]
            chunk = [encoded[i] for i in picked]
            width = max(len(p) + len(r) for p, r in chunk)
            ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            attention = torch.zeros_like(ids)
            reply_mask = torch.zeros_like(ids, dtype=torch.bool)
            for row, (p, r) in enumerate(chunk):
                ids[row, :len(p) + len(r)] = torch.tensor(p + r)
                attention[row, :len(p) + len(r)] = 1
                reply_mask[row, len(p):len(p) + len(r)] = True
            # at most up to each row's last prompt token, whose state predicts the reply's first token
            common = max(0, min(shared_prefix_length([p + r for p, r in chunk]), min(len(p) for p, _ in chunk) - 1))
            cache = None
            if common:
                cache = DynamicCache(config=base.config)
                backbone(input_ids=ids[:1, :common].to(device), past_key_values=cache, use_cache=True)
                cache.batch_repeat_interleave(len(chunk))
            # the backbone on every other position, the LM head and the log-softmax over the vocabulary only where a
            # reply token is predicted (position t predicts token t + 1): the same numbers as the whole model's logits
            # there, without projecting every prompt position onto 49k words
            hidden = backbone(input_ids=ids[:, common:].to(device), attention_mask=attention.to(device),
                              position_ids=torch.arange(common, width, device=device)[None].expand(len(chunk), -1),
                              past_key_values=cache, use_cache=False).last_hidden_state
            predicts = reply_mask[:, common + 1:].to(device)
            logits = head(hidden[:, :-1][predicts]).float()
            token_logps = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, common + 1:].to(device)[predicts].unsqueeze(-1))
            rows = torch.arange(len(chunk), device=device).unsqueeze(1).expand_as(predicts)[predicts]
            sums = torch.zeros(len(chunk), device=device).index_add_(0, rows, token_logps.squeeze(-1))
            out[torch.tensor(picked)] = sums.cpu()
    return out


def _checked(model, encoded, texts: Sequence[str], batch_size: int, reference: bool, max_length: int | None) -> None:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}.")
    if reference and not _is_peft(model):
        raise ValueError("reference=True needs a PEFT model (its adapter is switched off to read the reference); "
                         f"got {type(model).__name__}: wrap it with peft.get_peft_model, or pass reference=False.")
    for i, (prompt_ids, reply_ids) in enumerate(encoded):
        if not reply_ids:
            raise ValueError(f"reply {i} has no tokens after its prompt: {texts[i]!r}")
        if max_length is not None and len(prompt_ids) + len(reply_ids) > max_length:
            raise ValueError(f"row {i} has {len(prompt_ids) + len(reply_ids)} tokens, over max_length={max_length}: "
                             "DPOTrainer would truncate it (keep_start), so its log-probability would differ; raise "
                             "DPOConfig.max_length and pass the same value here, or shorten the row.")


def reply_logps(model, tokenizer, prompts: Sequence[str], replies: Sequence[str], batch_size: int = BATCH_SIZE,
                reference: bool = False, max_length: int | None = MAX_LENGTH) -> "torch.Tensor":
    """The summed log-probability of each reply given its prompt (a float32 tensor, one value per reply), from the
    model's logits: log-softmax over the vocabulary, the log-probability of each reply token given the tokens
    before it, summed over the reply; no gradient. Run it under the preset's autocast to match training.

    `reference=True` reads a PEFT model as `DPOTrainer` reads its reference: with the adapters switched off (a new
    adapter), or with the adapter named "ref" (the copy TRL keeps when it is given a model whose adapter was
    already trained). A row longer than `max_length` (DPOConfig's, 1024 by default) is an error: the trainer
    would truncate it."""
    encoded = _encode_replies(tokenizer, prompts, replies)
    _checked(model, encoded, replies, batch_size, reference, max_length)
    return _summed_logps(model, tokenizer, encoded, batch_size, reference)


def _encode_replies(tokenizer, prompts: Sequence[str], replies: Sequence[str]) -> list[tuple[list[int], list[int]]]:
    if len(prompts) != len(replies):
        raise ValueError(f"one reply per prompt: got {len(prompts)} prompts and {len(replies)} replies.")
    encoded = []
    for i, (prompt, reply) in enumerate(zip(prompts, replies)):
        try:
            prompt_ids, (reply_ids,) = reply_tokens(tokenizer, prompt, reply)
        except TypeError as error:
            raise TypeError(f"row {i}: {error}") from None
        encoded.append((prompt_ids, reply_ids))
    return encoded


def _encode_pairs(tokenizer, pairs: Sequence[PreferencePair]) -> tuple[list[tuple[list[int], list[int]]], list[str]]:
    """Every chosen reply, then every rejected one, each pair cut as `DPOTrainer` cuts it; and their texts."""
    for i, pair in enumerate(pairs):
        if not isinstance(pair, PreferencePair):
            raise TypeError(f"pair {i} must be a PreferencePair, got {type(pair).__name__}.")
    cut = [reply_tokens(tokenizer, p.prompt, p.chosen, p.rejected) for p in pairs]
    encoded = [(prompt_ids, replies[side]) for side in (0, 1) for prompt_ids, replies in cut]
    return encoded, [p.chosen for p in pairs] + [p.rejected for p in pairs]


def pair_logps(model, tokenizer, pairs: Sequence[PreferencePair], batch_size: int = BATCH_SIZE,
               reference: bool = False, max_length: int | None = MAX_LENGTH) -> tuple["torch.Tensor", "torch.Tensor"]:
    """The summed log-probability of each pair's chosen and of its rejected reply (two tensors, in the pairs'
    order), the pair cut into prompt and replies as `DPOTrainer` cuts it; otherwise as `reply_logps`."""
    encoded, texts = _encode_pairs(tokenizer, pairs)
    _checked(model, encoded, texts, batch_size, reference, max_length)
    both = _summed_logps(model, tokenizer, encoded, batch_size, reference)
    return both[:len(pairs)], both[len(pairs):]


def implicit_rewards(model, tokenizer, pairs: Sequence[PreferencePair], beta: float,
                     batch_size: int = BATCH_SIZE) -> dict:
    """DPO's implicit reward of each pair's replies, beta * (log pi(y|x) - log pi_ref(y|x)), with the PEFT model's
    adapter as the policy and the adapter switched off as the reference: lists `chosen` and `rejected`, their
    mean `margin` and the share of pairs whose chosen reply gets the higher reward (`accuracy`)."""
    if not beta > 0:
        raise ValueError(f"beta must be > 0 (the DPOConfig's beta the policy was trained with), got {beta}.")
    if not pairs:
        raise ValueError("implicit_rewards needs at least one pair.")
    encoded, texts = _encode_pairs(tokenizer, pairs)  # tokenized once, read under the policy and the reference
    _checked(model, encoded, texts, batch_size, True, MAX_LENGTH)
    ratio = (_summed_logps(model, tokenizer, encoded, batch_size, False)
             - _summed_logps(model, tokenizer, encoded, batch_size, True))
    r_chosen, r_rejected = beta * ratio[:len(pairs)], beta * ratio[len(pairs):]
    return {"chosen": r_chosen.tolist(), "rejected": r_rejected.tolist(),
            "margin": float((r_chosen - r_rejected).mean()), "accuracy": float((r_chosen > r_rejected).float().mean())}


# ---------------------------------------------------------------- pairs, training, measuring a policy

MAX_REPLY_WORDS = 40  # a reply in a graded pair: far longer than any answer needs
MAX_REPLY_CHARS = 400


def build_pairs(make_pair, questions: Sequence[Question], seed: int, tokenizer=None,
                max_length: int | None = None) -> list[PreferencePair]:
    """Exercise 7.2's pairs: `make_pair(question, rng)` -> (chosen, rejected) on each question in order, one
    `random.Random(seed)` shared, as the grader calls it (in a child process); then `checked_pairs`."""
    import random

    rng, raw = random.Random(seed), []
    for row, question in enumerate(questions):
        out = make_pair(question, rng)
        if not (isinstance(out, tuple) and len(out) == 2):
            raise ValueError(f"dpo_pair must return (chosen, rejected); for question {row} it returned {str(out)[:120]}.")
        raw.append(out)
    return checked_pairs(questions, raw, tokenizer, max_length)


def _checked_reply(row: int, name: str, text: str, tokenizer) -> None:
    if not 1 <= len(text.split()) <= MAX_REPLY_WORDS or len(text) > MAX_REPLY_CHARS:
        raise ValueError(f"pair {row}: the {name} reply has {len(text.split())} words and {len(text)} characters; a "
                         f"reply has 1 to {MAX_REPLY_WORDS} words and at most {MAX_REPLY_CHARS} characters: {text[:80]!r}.")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"pair {row}: the {name} reply is not valid text (it holds a lone surrogate): "
                         f"{text[:80]!r}.") from None
    special = [t for t in (tokenizer.all_special_tokens if tokenizer is not None else ()) if t and t in text]
    if special:
        raise ValueError(f"pair {row}: the {name} reply contains the chat template's control text {special[0]!r}; a "
                         "reply is plain text.")


def checked_pairs(questions: Sequence[Question], raw, tokenizer=None, max_length: int | None = None) -> list[PreferencePair]:
    """(chosen, rejected) replies, one per question, as preference pairs, each checked: two different strings of 1 to
    `MAX_REPLY_WORDS` words (and `MAX_REPLY_CHARS` characters), the chosen one scored higher by the judge; with a
    tokenizer, plain text (no chat-template control text) and, with `max_length` (the DPOConfig's), each
    conversation within it, so the trainer cuts nothing off. A ValueError names the row."""
    if not isinstance(raw, (list, tuple)) or len(raw) != len(questions):
        raise ValueError(f"expected one (chosen, rejected) per question: {len(questions)} questions, "
                         f"got {len(raw) if isinstance(raw, (list, tuple)) else type(raw).__name__}.")
    pairs = []
    for row, (question, pair) in enumerate(zip(questions, raw)):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(t, str) for t in pair)):
            raise ValueError(f"pair {row}: expected (chosen, rejected), two strings, got {str(pair)[:120]}.")
        chosen, rejected = pair
        for name, text in (("chosen", chosen), ("rejected", rejected)):
            _checked_reply(row, name, text, tokenizer)
        if chosen.strip() == rejected.strip():
            raise ValueError(f"pair {row}: chosen and rejected are the same reply {chosen[:60]!r}: a pair teaches "
                             "nothing when they do not differ.")
        if not judge(question, chosen) > judge(question, rejected):
            raise ValueError(f"pair {row}: the judge scores the chosen reply {judge(question, chosen):.1f} and the "
                             f"rejected one {judge(question, rejected):.1f}; the chosen must score higher "
                             f"(question asks for the {question.item}, answer {question.answer}): "
                             f"{chosen[:60]!r} vs {rejected[:60]!r}.")
        if tokenizer is not None and max_length is not None:
            prompt_ids, reply_ids = reply_tokens(tokenizer, question.prompt, chosen, rejected)
            longest = len(prompt_ids) + max(len(ids) for ids in reply_ids)
            if longest > max_length:
                raise ValueError(f"pair {row}: prompt and reply are {longest} tokens, over the DPOConfig's max_length "
                                 f"{max_length}: the trainer would cut the reply. Shorten the replies.")
        pairs.append(PreferencePair(question.prompt, chosen, rejected, "yours"))
    return pairs


def dpo_trainer_class(preset: Preset):
    """The DPO trainer a preset trains with: TRL's `DPOTrainer`, or on a CPU its subclass whose fused LM head scores
    the reply tokens only, as TRL's Triton path does on a GPU (`training.scoring_labelled_positions_only`), and which
    runs each pair's prompt once for both replies (`share_prompt_forward`). The same losses and logged rewards up to
    rounding (float32: tests/test_dpo.py); the LM head's change took a step of 4 pairs from 8.4-9.8 s to
    3.7-4.4 s in float32 and from 5.4-7.1 s to 3.1-3.3 s under bf16 autocast (2026-12-04, the 2-core EPYC with
    AVX512-BF16)."""
    from trl import DPOTrainer

    from .training import preset_trainer_class

    return preset_trainer_class(DPOTrainer, preset)


def train_dpo(model, tokenizer, pairs: Sequence[PreferencePair], lora: "peft.LoraConfig", args: "trl.DPOConfig",
              progress: bool = True, trainer_class=None) -> tuple[object, "TrainResult", list[dict]]:
    """The DPO recipe packaged: `trainer_class` (`dpo_trainer_class(preset)`; TRL's `DPOTrainer` when None) with a
    `LoraConfig` (a new adapter, so the reference is the adapter switched off) and a `DPOConfig`. Returns (trained
    PEFT model, TrainResult, the trainer's logged rows: loss, rewards/*, logps/* per step). TrainResult counts no
    tokens (0), as `reward.train_reward_model`."""
    from trl import DPOTrainer

    from .reward import preference_dataset
    from .training import train_pairs

    trained, result, trainer = train_pairs(trainer_class or DPOTrainer, model, tokenizer, preference_dataset(pairs),
                                           lora, args, progress)
    logged = [{k: v for k, v in row.items() if k == "step" or k == "loss" or k.startswith(("rewards/", "logps/"))}
              for row in trainer.state.log_history if "loss" in row]
    return trained, result, logged


def policy_scores(model, tokenizer, questions: Sequence[Question], max_new_tokens: int = 16) -> dict:
    """A policy's greedy replies to `questions` and what they measure: the judge's mean score, the share right, mean
    words (`rlhf.judge_replies`), and for a PEFT model `log_ratio`, the mean over its replies of log pi(y|x) -
    log pi_ref(y|x), each reply read as a finished turn: how much more likely the policy finds what it says than
    the reference does (0 for a new adapter), summed over the reply's tokens, so it grows with reply length
    (`reply_tokens`: their mean count, end-of-turn tokens included). Greedy replies are the policy's likeliest,
    not samples from it, so this is a drift measure, not an unbiased estimate of the KL divergence."""
    from .rlhf import judge_replies, sample_replies

    replies = sample_replies(model, tokenizer, questions, n=1, max_new_tokens=max_new_tokens, temperature=0)
    scores = judge_replies(questions, replies) | {"replies": [r[0] for r in replies]}
    if _is_peft(model):
        texts = [r[0] for r in replies]
        encoded = _encode_replies(tokenizer, [q.prompt for q in questions], texts)  # once, for both readings
        _checked(model, encoded, texts, BATCH_SIZE, True, MAX_LENGTH)
        ratio = (_summed_logps(model, tokenizer, encoded, BATCH_SIZE, False)
                 - _summed_logps(model, tokenizer, encoded, BATCH_SIZE, True))
        scores["log_ratio"] = float(ratio.mean())
        scores["reply_tokens"] = sum(len(reply_ids) for _, reply_ids in encoded) / len(encoded)
    return scores


def preset_dpo_args(preset: Preset) -> dict:
    """The `DPOConfig` arguments the machine fixes, not the learner: `training.preset_sft_args`'s for shuffled pairs
    (precision, device, no activation checkpointing, a loss logged per step, nothing saved, `max_length`), as the
    grader rebuilds a learner's DPOConfig (`training.checked_recipe`)."""
    from .training import preset_sft_args

    return preset_sft_args(preset, "padded")
