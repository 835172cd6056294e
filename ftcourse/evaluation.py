"""Evaluation: exact match by greedy generation, log-likelihood scoring, perplexity."""

from __future__ import annotations

import contextlib
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


@contextlib.contextmanager
def frozen_weights_in_autocast_dtype(model):
    """Under CPU autocast, `model`'s frozen float32 linear weights stored in autocast's dtype until the block ends,
    then the same float32 tensors put back.

    Autocast keeps its cast of a weight that requires grad for the rest of its block, but casts a frozen weight again
    at every call: greedy generation cast every frozen weight (a LoRA model's whole base, a teacher, a merged model)
    once per new token. Cast once here, the numbers are the same (autocast's cast rounds the same way). Only the
    weights of linear layers, and not one shared with another kind of module (a head tied to the embeddings), whose
    other use autocast does not cast. A no-op outside CPU autocast.
    """
    if not torch.is_autocast_enabled("cpu"):
        yield
        return
    dtype = torch.get_autocast_dtype("cpu")
    elsewhere = {id(p) for module in model.modules() if not isinstance(module, torch.nn.Linear)
                 for p in module.parameters(recurse=False)}
    swapped = []
    try:
        for module in model.modules():
            weight = getattr(module, "weight", None)
            if (isinstance(module, torch.nn.Linear) and type(weight) is torch.nn.Parameter and not weight.requires_grad
                    and weight.dtype == torch.float32 and weight.device.type == "cpu" and id(weight) not in elsewhere):
                swapped.append((weight, weight.data))
                weight.data = weight.data.to(dtype)
        yield
    finally:
        for weight, data in reversed(swapped):
            weight.data = data


@torch.no_grad()
def generate_answers(model, tokenizer, prompts: Sequence[str], batch_size: int = 32, max_new_tokens: int = 12,
                     shots: Sequence[Example] = (), prompt_format: str = "chat", padding_side: str = "left",
                     share_prefix: bool = True) -> list[str]:
    """Greedy replies, batched; `shots` are prepended as earlier turns.

    Decoder-only models must be padded on the left for batched generation: with right padding, short
    prompts end in pad tokens and the model continues from them (notebook 02 measures what that costs).
    `share_prefix`: the tokens every prompt of a batch starts with (the chat template's system turn, the
    task's instruction, few-shot turns) are run once and their cache is shared by the batch, with the
    padding placed after them instead of before; the model sees the same tokens at the same positions. The prompts'
    own parts are then run in length buckets, so little padding goes through the model, and on a CPU in float32
    the cache grows in place while the replies are generated (`_prefilled_in_buckets`).
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}.")
    device = next(model.parameters()).device
    old_side = tokenizer.padding_side
    tokenizer.padding_side = padding_side
    replies: list[str] = []
    try:
        with frozen_weights_in_autocast_dtype(model):  # cast once, not at every new token
            for start in range(0, len(prompts), batch_size):
                chunk = prompts[start:start + batch_size]
                texts = [render_prompt(tokenizer, p, prompt_format, shots) for p in chunk]
                if share_prefix and padding_side == "left":
                    replies += _generate_with_shared_prefix(model, tokenizer, texts, max_new_tokens, device)
                    continue
                batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
                out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
                replies += tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    finally:
        tokenizer.padding_side = old_side
    return replies


@torch.no_grad()
def prefill_ms_per_query(model, tokenizer, texts: Sequence[str], batch_size: int = 32) -> float:
    """Milliseconds per query to read rendered prompts once (the forward pass before the first new token),
    batched and left-padded, with no cache shared between prompts, after one warm-up batch: the cost a
    prompt's length adds to every call, apart from how long the reply is."""
    import time

    device = next(model.parameters()).device
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        batches = [tokenizer(list(texts[i:i + batch_size]), return_tensors="pt", padding=True, add_special_tokens=False).to(device)
                   for i in range(0, len(texts), batch_size)]
        warm = {name: value[:2] for name, value in batches[0].items()}
        model(**warm, logits_to_keep=1, use_cache=False)  # warm-up: first-call costs are not the prompt's
        start = time.perf_counter()
        for batch in batches:
            model(**batch, logits_to_keep=1, use_cache=False)
        return 1000 * (time.perf_counter() - start) / len(texts)
    finally:
        tokenizer.padding_side = old_side


def reply_tokens(tokenizer, replies: Sequence[str]) -> float:
    """Mean tokens per reply (the end token not counted): what generation pays per query, token by token."""
    return sum(len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in replies) / max(len(replies), 1)


# What one more prefill call costs, in prompt tokens of work (its weights read once more, thirty layers of Python):
# `length_buckets` splits a batch's prompts where the padding it saves is worth more than a call.
PREFILL_CALL_TOKENS = 32


def length_buckets(lengths: Sequence[int], call_tokens: int | None = None) -> list[list[int]]:
    """Indices of `lengths` in groups to prefill together, shortest first: each group is padded to its longest, and
    the split minimises the padded tokens plus `call_tokens` (default `PREFILL_CALL_TOKENS`) per group (dynamic
    programming over the sorted lengths)."""
    call_tokens = PREFILL_CALL_TOKENS if call_tokens is None else call_tokens
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    ordered = [lengths[i] for i in order]
    best, cut = [0.0] + [math.inf] * len(order), [0] * (len(order) + 1)
    for end in range(1, len(order) + 1):
        for start in range(end):
            cost = best[start] + (end - start) * ordered[end - 1] + call_tokens
            if cost < best[end]:
                best[end], cut[end] = cost, start
    groups, end = [], len(order)
    while end:
        groups.append(order[cut[end]:end])
        end = cut[end]
    return groups[::-1]


def _prefilled_in_buckets(model, config, prefix, rest: Sequence[Sequence[int]], shared: int, pad_id: int, device,
                          room: int):
    """The cache `generate` continues from, for rows laid out as prefix, padding, rest (`shared` prefix columns, then
    as many as the longest rest): every token of each row but its last. The prefix's cache (one row) goes to every
    row; the rests run in length buckets (`length_buckets`), each padded only to its own longest, and are placed
    right-aligned in one cache, the columns left of each bucket zeros; the mask hides them. The same tokens at the same
    positions (the mask's running count), so the same keys and values as one prefill of the padded batch up to
    floating-point rounding, without running most of its padding (a bucket's shorter rows are padded to its longest;
    every padding column, zeros or a pad token's, is masked). On a CPU, when the prefilled keys and values share one
    dtype (`StaticCache` allocates both in the keys' at its first update), the cache has `room` more columns for the
    reply, written in place (`_in_place_cache`): a growing cache copies itself at every new token."""
    from transformers import DynamicCache

    n, layers, width = len(rest), config.num_hidden_layers, max(map(len, rest))
    own_parts: list[tuple[list[int], int, object]] = []  # (rows, columns, the bucket's cache)
    for group in length_buckets([len(t) - 1 for t in rest]):
        own = max(len(rest[r]) - 1 for r in group)
        if own == 0:
            continue  # these rows' only own token is their last: `generate` runs it
        ids = torch.full((len(group), own), pad_id, dtype=torch.long)
        mask = torch.zeros(len(group), shared + own, dtype=torch.long)
        mask[:, :shared] = 1
        for i, r in enumerate(group):
            tail = rest[r][:-1]
            if tail:
                ids[i, own - len(tail):] = torch.tensor(tail)
                mask[i, shared + own - len(tail):] = 1
        cache = DynamicCache(config=config)
        for layer in range(layers if shared else 0):
            cache.update(prefix.layers[layer].keys.expand(len(group), -1, -1, -1).contiguous(),
                         prefix.layers[layer].values.expand(len(group), -1, -1, -1).contiguous(), layer)
        model(input_ids=ids.to(device), attention_mask=mask.to(device),
              position_ids=(mask.cumsum(-1) - 1).clamp(min=0)[:, shared:].to(device),
              past_key_values=cache, use_cache=True, logits_to_keep=1)
        own_parts.append((group, own, cache))
    if not shared and not own_parts:
        return DynamicCache(config=config)  # nothing before the rows' last tokens: `generate` runs them all
    parts = []
    for layer in range(layers):
        like = own_parts[0][2].layers[layer] if own_parts else prefix.layers[layer]  # the shape and dtype to take
        merged = []
        for kind in ("keys", "values"):
            sample = getattr(like, kind)
            full = sample.new_zeros(n, sample.size(1), shared + width - 1, sample.size(3))
            if shared:
                full[:, :, :shared] = getattr(prefix.layers[layer], kind)
            for group, own, cache in own_parts:
                full[torch.tensor(group, device=full.device), :, shared + width - 1 - own:] = \
                    getattr(cache.layers[layer], kind)[:, :, shared:]
            merged.append(full)
        parts.append(merged)
    static = room and device.type == "cpu" and len({t.dtype for pair in parts for t in pair}) == 1
    out = (_in_place_cache(config, shared + width - 1 + room) if static else DynamicCache(config=config))
    for layer, (keys, values) in enumerate(parts):
        out.update(keys, values, layer)
    return out


def _in_place_cache(config, max_cache_len: int):
    """transformers' `StaticCache` (room for `max_cache_len` columns, written in place) whose layers store what they
    are given in their own dtype, as the growing cache does. Under bf16 autocast a layer's new keys come out in
    float32 (the rotary embedding's tables are float32) and its new values in bf16; the growing `DynamicCache`
    concatenates the values to its float32 start and so keeps them in float32, but `StaticCache` copies them in
    without a cast and refuses two dtypes. From the second update on, each layer casts what it receives to the dtype
    it stores (the first update, which allocates, must bring keys and values of one dtype). Casting bf16 to float32
    is exact, so the cache holds the growing cache's keys and values; the replies are the same up to rounding (the
    attention runs over the cache's unwritten, masked columns too)."""
    from transformers import StaticCache
    from transformers.cache_utils import StaticLayer

    class CastingStaticLayer(StaticLayer):
        def update(self, key_states, value_states, *args, **kwargs):
            if self.is_initialized:
                key_states, value_states = key_states.to(self.keys.dtype), value_states.to(self.values.dtype)
            return super().update(key_states, value_states, *args, **kwargs)

    cache = StaticCache(config=config, max_cache_len=max_cache_len)
    for layer in cache.layers:
        if type(layer) is not StaticLayer:
            raise TypeError(f"_in_place_cache expects transformers' StaticLayer, got {type(layer).__name__}.")
        layer.__class__ = CastingStaticLayer
    return cache


def shared_prefix_length(ids: Sequence[Sequence[int]]) -> int:
    """How many first tokens every row of `ids` has in common, leaving each row at least one token of its own."""
    shared = min(len(x) for x in ids) - 1
    for i, token in enumerate(ids[0][:shared]):
        if any(x[i] != token for x in ids):
            return i
    return shared


def _generate_with_shared_prefix(model, tokenizer, texts: Sequence[str], max_new_tokens: int, device,
                                 in_place: bool = True) -> list[str]:
    """Greedy replies to `texts`, whose common first tokens are run once: rows are prefix, padding, rest, and the
    rests are prefilled in length buckets (`_prefilled_in_buckets`), so little padding goes through the model.
    `in_place` False keeps the growing cache on a CPU too (tests). A model with sliding-window layers (whose cache
    keeps only its window) gets the prefix's cache repeated and `generate`'s own prefill of the padded rows."""
    from transformers import DynamicCache

    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    shared = shared_prefix_length(ids)
    rest = [x[shared:] for x in ids]
    width = max(map(len, rest))
    rows = torch.full((len(ids), shared + width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(rows)
    for r, (full, tail) in enumerate(zip(ids, rest)):
        rows[r, :shared], mask[r, :shared] = torch.tensor(full[:shared]), 1
        rows[r, shared + width - len(tail):], mask[r, shared + width - len(tail):] = torch.tensor(tail), 1
    rows, mask = rows.to(device), mask.to(device)
    config = (model.get_base_model() if hasattr(model, "get_base_model") else model).config
    prefix = DynamicCache(config=config)
    if shared:
        model(input_ids=rows[:1, :shared], attention_mask=mask[:1, :shared], past_key_values=prefix, use_cache=True,
              logits_to_keep=1)
    if any(getattr(layer, "is_sliding", False) for layer in prefix.layers):
        prefix.batch_repeat_interleave(len(ids))
        cache = prefix
    else:
        cache = _prefilled_in_buckets(model, config, prefix, rest, shared, tokenizer.pad_token_id, device,
                                      max_new_tokens if in_place else 0)
    out = model.generate(input_ids=rows, attention_mask=mask, past_key_values=cache, max_new_tokens=max_new_tokens,
                         do_sample=False, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    return tokenizer.batch_decode(out[:, rows.shape[1]:], skip_special_tokens=True)


def chat_prompt(tokenizer, prompt: str, shots: Sequence[Example] = ()) -> str:
    """The text the model completes: the `shots` as earlier user/assistant turns, then `prompt`."""
    messages = [m for shot in shots for m in shot.messages()] + [{"role": "user", "content": prompt}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def exact_match(model, tokenizer, examples: Sequence[Example], batch_size: int = 32,
                shots: Sequence[Example] = (), prompt_format: str = "chat",
                padding_side: str = "left", max_new_tokens: int = 12, share_prefix: bool = True) -> tuple[float, list[str]]:
    """Fraction of examples whose greedy reply equals the answer exactly, and the replies.

    With `shots` (few-shot prompting) each query is preceded by those solved examples as chat turns.
    """
    if not examples:
        raise ValueError("exact_match needs at least one example; got an empty list.")
    replies = generate_answers(model, tokenizer, [e.prompt for e in examples], batch_size=batch_size, shots=shots,
                               prompt_format=prompt_format, padding_side=padding_side,
                               max_new_tokens=max_new_tokens, share_prefix=share_prefix)
    hits = sum(normalise_answer(r) == e.answer for r, e in zip(replies, examples))
    return hits / len(examples), replies


def _split_pair(tokenizer, ctx: str, cont: str) -> tuple[list[int], list[int]]:
    ctx_ids = tokenizer(ctx, add_special_tokens=False)["input_ids"]
    cont_ids = tokenizer(ctx + cont, add_special_tokens=False)["input_ids"][len(ctx_ids):]
    if not cont_ids:
        raise ValueError(f"Continuation {cont!r} adds no tokens after context {ctx[-40:]!r}.")
    return ctx_ids, cont_ids


@torch.no_grad()
def continuation_logprobs(model, tokenizer, contexts: Sequence[str], continuations: Sequence[str], batch_size: int = 32,
                          share_contexts: bool = True) -> list[float]:
    """Sum of log p(continuation | context) over the continuation's tokens, for each pair.

    Rows are left-padded with explicit position ids, so the continuations end every row and only the
    last few positions need logits (`logits_to_keep`): the vocabulary projection is the costly part.
    `share_contexts`: a context that several continuations share (a question and its choices) runs once, in a batch
    of contexts of similar length; its cache then serves each continuation, at the same positions.
    """
    if len(contexts) != len(continuations):
        raise ValueError(f"{len(contexts)} contexts but {len(continuations)} continuations; they must pair up.")
    if share_contexts and len(set(contexts)) < len(contexts):
        return _shared_context_logprobs(model, tokenizer, contexts, continuations, batch_size)
    device = next(model.parameters()).device
    scores: list[float] = []
    pad_id = tokenizer.pad_token_id
    for start in range(0, len(contexts), batch_size):
        ids, cont_lens = [], []
        for ctx, cont in zip(contexts[start:start + batch_size], continuations[start:start + batch_size]):
            ctx_ids, cont_ids = _split_pair(tokenizer, ctx, cont)
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


def _shared_context_logprobs(model, tokenizer, contexts, continuations, batch_size: int) -> list[float]:
    """`continuation_logprobs` with each distinct context run once: contexts left-padded in a batch, their last
    position scoring every continuation's first token; a continuation of several tokens then runs its tokens
    but the last (each predicts the next) on top of its context's cache, at the same positions. A one-token
    continuation (most answer choices) needs no second pass."""
    from transformers import DynamicCache

    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id
    pairs = [_split_pair(tokenizer, ctx, cont) for ctx, cont in zip(contexts, continuations)]
    by_context: dict[str, list[int]] = {}
    for index, ctx in enumerate(contexts):
        by_context.setdefault(ctx, []).append(index)
    # batches of contexts of similar length, so that little padding runs (the probe's: 1,536 columns, not 1,856)
    order = sorted(by_context, key=lambda ctx: len(pairs[by_context[ctx][0]][0]))
    per_batch = max(1, batch_size * len(order) // len(contexts))  # contexts per batch, so a batch holds ~batch_size pairs
    config = (model.get_base_model() if hasattr(model, "get_base_model") else model).config
    scores = [0.0] * len(contexts)
    for start in range(0, len(order), per_batch):
        group = order[start:start + per_batch]
        ctx_ids = [pairs[by_context[ctx][0]][0] for ctx in group]
        width = max(map(len, ctx_ids))
        ids = torch.full((len(group), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, seq in enumerate(ctx_ids):
            ids[row, width - len(seq):], mask[row, width - len(seq):] = torch.tensor(seq), 1
        members = [(row, index) for row, ctx in enumerate(group) for index in by_context[ctx]]
        longer = [(row, index) for row, index in members if len(pairs[index][1]) > 1]
        cache = DynamicCache(config=config) if longer else None
        first = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                      position_ids=((mask.cumsum(-1) - 1).clamp(min=0)).to(device), past_key_values=cache,
                      use_cache=bool(longer), logits_to_keep=1).logits[:, -1].float().log_softmax(-1)
        for row, index in members:
            scores[index] = first[row, pairs[index][1][0]].item()
        if not longer:
            continue
        rows = torch.tensor([row for row, _ in longer])
        cache.batch_select_indices(rows.to(device))
        conts = [pairs[index][1] for _, index in longer]
        cont_width = max(map(len, conts)) - 1  # the last token of a continuation predicts nothing
        cont_ids = torch.full((len(longer), cont_width), pad_id, dtype=torch.long)
        cont_mask = torch.zeros_like(cont_ids)
        for r, seq in enumerate(conts):
            cont_ids[r, :len(seq) - 1], cont_mask[r, :len(seq) - 1] = torch.tensor(seq[:-1]), 1
        lengths = mask.sum(-1)[rows]
        positions = lengths[:, None] + torch.arange(cont_width)[None]
        logits = model(input_ids=cont_ids.to(device), attention_mask=torch.cat([mask[rows], cont_mask], 1).to(device),
                       position_ids=positions.to(device), past_key_values=cache, use_cache=True).logits.float()
        logprobs = logits.log_softmax(-1)  # position j predicts continuation token j + 1
        for r, ((_, index), seq) in enumerate(zip(longer, conts)):
            scores[index] += logprobs[r, torch.arange(len(seq) - 1), torch.tensor(seq[1:])].sum().item()
    return scores


def _answer_nll(model, tokenizer, examples: Sequence[Example], batch_size: int) -> tuple[list[float], list[int]]:
    """Each example's summed negative log-likelihood of its answer and end-of-turn token, and their count."""
    contexts = [chat_prompt(tokenizer, e.prompt) for e in examples]
    continuations = [e.answer + tokenizer.eos_token for e in examples]
    logprobs = continuation_logprobs(model, tokenizer, contexts, continuations, batch_size)
    tokens = [len(tokenizer(c + a, add_special_tokens=False)["input_ids"]) - len(tokenizer(c, add_special_tokens=False)["input_ids"])
              for c, a in zip(contexts, continuations)]
    return [-lp for lp in logprobs], tokens


def answer_loss(model, tokenizer, examples: Sequence[Example], batch_size: int = 32) -> float:
    """Mean negative log-likelihood per token of the answer and its end-of-turn token, given the chat prompt.

    Lower means the model finds the right answer more likely: the quantity memorisation lowers first.
    """
    nll, tokens = _answer_nll(model, tokenizer, examples, batch_size)
    return sum(nll) / sum(tokens)


def answer_losses(model, tokenizer, examples: Sequence[Example], batch_size: int = 32) -> list[float]:
    """`answer_loss` of each example on its own (per token of its answer), for paired comparisons per item."""
    nll, tokens = _answer_nll(model, tokenizer, examples, batch_size)
    return [n / t for n, t in zip(nll, tokens)]


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
