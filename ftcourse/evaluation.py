"""Evaluation: exact match by greedy generation, log-likelihood scoring, perplexity."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .tasks import Example


def normalise_answer(text: str) -> str:
    """What exact match compares: the reply's first line, stripped."""
    return text.strip().splitlines()[0].strip() if text.strip() else ""


FEW_SHOT_K = 3  # notebook 01's few-shot baseline: the first three training examples as earlier turns
PLAIN_TEMPLATE = "Question: {}\nAnswer:"  # a format that is not the model's chat template (notebook 02)
PROMPT_FORMATS = ("chat", "plain")


def render_prompt(tokenizer, prompt: str, prompt_format: str = "chat", shots: Sequence[Example] = ()) -> str:
    """The text a model completes for `prompt`: its chat template, or the plain `PLAIN_TEMPLATE`."""
    if prompt_format == "chat":
        return chat_prompt(tokenizer, prompt, shots)
    if prompt_format == "plain" and not shots:
        return PLAIN_TEMPLATE.format(prompt)
    raise ValueError(f"prompt_format must be one of {PROMPT_FORMATS} (no shots with 'plain'), got {prompt_format!r}.")


@torch.no_grad()
def generate_answers(model, tokenizer, prompts: Sequence[str], batch_size: int = 32, max_new_tokens: int = 12,
                     shots: Sequence[Example] = (), prompt_format: str = "chat", padding_side: str = "left") -> list[str]:
    """Greedy replies, batched; `shots` are prepended as earlier turns.

    Decoder-only models must be padded on the left for batched generation: with right padding, short
    prompts end in pad tokens and the model continues from them (notebook 02 measures what that costs).
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}.")
    device = next(model.parameters()).device
    old_side = tokenizer.padding_side
    tokenizer.padding_side = padding_side
    replies: list[str] = []
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start:start + batch_size]
            texts = [render_prompt(tokenizer, p, prompt_format, shots) for p in chunk]
            batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            replies += tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    finally:
        tokenizer.padding_side = old_side
    return replies


def chat_prompt(tokenizer, prompt: str, shots: Sequence[Example] = ()) -> str:
    """The text the model completes: the `shots` as earlier user/assistant turns, then `prompt`."""
    messages = [m for shot in shots for m in shot.messages()] + [{"role": "user", "content": prompt}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def exact_match(model, tokenizer, examples: Sequence[Example], batch_size: int = 32,
                shots: Sequence[Example] = (), prompt_format: str = "chat",
                padding_side: str = "left", max_new_tokens: int = 12) -> tuple[float, list[str]]:
    """Fraction of examples whose greedy reply equals the answer exactly, and the replies.

    With `shots` (few-shot prompting) each query is preceded by those solved examples as chat turns.
    """
    if not examples:
        raise ValueError("exact_match needs at least one example; got an empty list.")
    replies = generate_answers(model, tokenizer, [e.prompt for e in examples], batch_size=batch_size, shots=shots,
                               prompt_format=prompt_format, padding_side=padding_side,
                               max_new_tokens=max_new_tokens)
    hits = sum(normalise_answer(r) == e.answer for r, e in zip(replies, examples))
    return hits / len(examples), replies


@torch.no_grad()
def continuation_logprobs(model, tokenizer, contexts: Sequence[str], continuations: Sequence[str], batch_size: int = 32) -> list[float]:
    """Sum of log p(continuation | context) over the continuation's tokens, for each pair.

    Rows are left-padded with explicit position ids, so the continuations end every row and only the
    last few positions need logits (`logits_to_keep`): the vocabulary projection is the costly part.
    """
    if len(contexts) != len(continuations):
        raise ValueError(f"{len(contexts)} contexts but {len(continuations)} continuations; they must pair up.")
    device = next(model.parameters()).device
    scores: list[float] = []
    pad_id = tokenizer.pad_token_id
    for start in range(0, len(contexts), batch_size):
        ids, cont_lens = [], []
        for ctx, cont in zip(contexts[start:start + batch_size], continuations[start:start + batch_size]):
            ctx_ids = tokenizer(ctx, add_special_tokens=False)["input_ids"]
            cont_ids = tokenizer(ctx + cont, add_special_tokens=False)["input_ids"][len(ctx_ids):]
            if not cont_ids:
                raise ValueError(f"Continuation {cont!r} adds no tokens after context {ctx[-40:]!r}.")
            ids.append(ctx_ids + cont_ids)
            cont_lens.append(len(cont_ids))
        width = max(map(len, ids))
        input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
        attention = torch.zeros_like(input_ids)
        for row, seq in enumerate(ids):
            input_ids[row, width - len(seq):] = torch.tensor(seq)
            attention[row, width - len(seq):] = 1
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        keep = max(cont_lens) + 1
        logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                       position_ids=positions.to(device), logits_to_keep=keep).logits.float()
        logprobs = torch.log_softmax(logits[:, :-1], dim=-1)  # position j predicts token width - keep + 1 + j
        targets = input_ids[:, width - keep + 1:].to(device)
        token_lp = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        for row, n in enumerate(cont_lens):
            scores.append(token_lp[row, token_lp.shape[1] - n:].sum().item())
    return scores


def answer_loss(model, tokenizer, examples: Sequence[Example], batch_size: int = 32) -> float:
    """Mean negative log-likelihood per token of the answer and its end-of-turn token, given the chat prompt.

    Lower means the model finds the right answer more likely: the quantity memorisation lowers first.
    """
    contexts = [chat_prompt(tokenizer, e.prompt) for e in examples]
    continuations = [e.answer + tokenizer.eos_token for e in examples]
    logprobs = continuation_logprobs(model, tokenizer, contexts, continuations, batch_size)
    tokens = [len(tokenizer(c + a, add_special_tokens=False)["input_ids"]) - len(tokenizer(c, add_special_tokens=False)["input_ids"])
              for c, a in zip(contexts, continuations)]
    return -sum(logprobs) / sum(tokens)


@torch.no_grad()
def perplexity(model, tokenizer, text: str, window: int = 256) -> float:
    """Perplexity of `text` in non-overlapping windows of `window` tokens."""
    device = next(model.parameters()).device
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
    if len(ids) < 2:
        raise ValueError("perplexity needs a text of at least two tokens.")
    total_nll, total_tokens = 0.0, 0
    for start in range(0, len(ids) - 1, window):
        chunk = ids[start:start + window + 1].unsqueeze(0).to(device)
        if chunk.shape[1] < 2:
            break
        out = model(input_ids=chunk, labels=chunk)
        n = chunk.shape[1] - 1
        total_nll += out.loss.float().item() * n
        total_tokens += n
    return math.exp(total_nll / total_tokens)
