import math

import pytest
import torch

from ftcourse.evaluation import continuation_logprobs, exact_match, normalise_answer, perplexity
from ftcourse.tasks import Example


def test_normalise_answer_takes_first_line():
    assert normalise_answer("  2021-03-05\nmore") == "2021-03-05"
    assert normalise_answer("   ") == ""


def test_continuation_logprobs_equal_a_direct_computation(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    ctx, cont = "Question: What is the capital of France?\nAnswer:", " Paris"
    ids = tokenizer(ctx + cont, add_special_tokens=False, return_tensors="pt")["input_ids"]
    n_ctx = len(tokenizer(ctx, add_special_tokens=False)["input_ids"])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
    direct = sum(logp[t - 1, ids[0, t]].item() for t in range(n_ctx, ids.shape[1]))
    # batched with a longer neighbour, so padding is exercised too
    batched = continuation_logprobs(model, tokenizer, [ctx, ctx + " I think"], [cont, " it is Paris"])
    assert batched[0] == pytest.approx(direct, abs=1e-3)


def test_mismatched_lengths_raise(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    with pytest.raises(ValueError, match="2 contexts but 1 continuations"):
        continuation_logprobs(model, tokenizer, ["a", "b"], ["c"])


def test_exact_match_scores_replies(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    score, replies = exact_match(model, tokenizer, [Example("Reply with exactly the word: yes", "yes"),
                                                    Example("Reply with exactly: zzzz-qqqq", "2001-01-01")])
    assert len(replies) == 2 and 0.0 <= score <= 0.5
    with pytest.raises(ValueError, match="at least one example"):
        exact_match(model, tokenizer, [])


def test_perplexity_is_finite_and_lower_on_natural_text(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    natural = perplexity(model, tokenizer, "The cat sat on the mat and looked out of the window at the rain.")
    scrambled = perplexity(model, tokenizer, "mat window rain the of cat on looked sat the at out and the.")
    assert math.isfinite(natural) and natural < scrambled


def test_prompt_formats_padding_side_and_answer_loss(model_and_tokenizer):
    from ftcourse.evaluation import PLAIN_TEMPLATE, answer_loss, generate_answers, render_prompt
    from ftcourse.tasks import Example

    model, tokenizer = model_and_tokenizer
    assert render_prompt(tokenizer, "Hi", "plain") == PLAIN_TEMPLATE.format("Hi")
    assert render_prompt(tokenizer, "Hi").endswith("<|im_start|>assistant\n")
    with pytest.raises(ValueError, match="prompt_format must be one of"):
        render_prompt(tokenizer, "Hi", "alpaca")
    with pytest.raises(ValueError, match="padding_side must be 'left' or 'right'"):
        generate_answers(model, tokenizer, ["Hi"], padding_side="middle")
    right = Example("What is the capital of France? Answer with one word.", "Paris")
    wrong = Example("What is the capital of France? Answer with one word.", "Banana")
    assert answer_loss(model, tokenizer, [right]) < answer_loss(model, tokenizer, [wrong])
    # per item, the same quantity: the token-weighted mean of the per-item losses is the pooled loss
    from ftcourse.evaluation import answer_losses

    per_item = answer_losses(model, tokenizer, [right, wrong])
    counts = [len(tokenizer(a + tokenizer.eos_token, add_special_tokens=False)["input_ids"]) for a in ("Paris", "Banana")]
    assert per_item[0] == pytest.approx(answer_loss(model, tokenizer, [right]), rel=1e-4)
    assert sum(l * n for l, n in zip(per_item, counts)) / sum(counts) == pytest.approx(
        answer_loss(model, tokenizer, [right, wrong]), rel=1e-3)


def test_a_shared_prompt_prefix_changes_no_reply(model_and_tokenizer):
    """The shared-prefix path (prefix run once, padding after it) answers exactly as plain left padding does."""
    from ftcourse.tasks import make_date_examples, make_phone_examples

    model, tokenizer = model_and_tokenizer
    dates = make_date_examples(10, 21)
    for examples, shots in ((dates, ()), (make_phone_examples(6, 22), make_phone_examples(2, 23))):
        plain = exact_match(model, tokenizer, examples, 16, shots=shots, share_prefix=False)
        shared = exact_match(model, tokenizer, examples, 16, shots=shots, share_prefix=True)
        assert shared == plain


def test_length_buckets_cover_every_row_once_and_weigh_padding_against_calls():
    from ftcourse.evaluation import length_buckets

    lengths = [5, 30, 6, 29, 5, 31, 18]
    for call_tokens in (0, 8, 32, 10**6):
        groups = length_buckets(lengths, call_tokens)
        assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
        flat = [lengths[i] for g in groups for i in g]
        assert flat == sorted(lengths)  # contiguous runs of the sorted lengths, shortest first
    assert len(length_buckets(lengths, 10**6)) == 1  # a call dearer than any padding: one batch, as before
    assert len(length_buckets(lengths, 0)) == len(set(lengths))  # free calls: no padding at all
    assert [sorted(lengths[i] for i in g) for g in length_buckets(lengths, 8)] == [[5, 5, 6], [18], [29, 30, 31]]


def _plain_greedy(model, tokenizer, texts, new_tokens):
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**batch, max_new_tokens=new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    finally:
        tokenizer.padding_side = side
    return tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)


def test_bucketed_prefill_answers_as_one_padded_batch(model_and_tokenizer):
    """Prompts whose own parts (after the shared prefix) differ in length go through the model in length buckets,
    with the cache written in place on a CPU or grown as `generate` grows it; the replies are those of one plain
    left-padded `generate`, including a prompt whose only own token is its last (nothing of it to prefill), a batch
    with no shared prefix, and a single prompt."""
    from ftcourse import evaluation

    model, tokenizer = model_and_tokenizer
    head = "Question: what comes next in the list? Answer with the next number only.\n7, "
    texts = [head + "8", head + "9, 11,", head + "14, 21, 28, 35, 42, 49, 56, 63, 70, 77,", head + "10, 13, 16,",
             head + "6, 5, 4, 3, 2, 1, 0, -1, -2, -3, -4, -5, -6, -7,"]
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    shared = evaluation.shared_prefix_length(ids)
    own = [len(x) - shared for x in ids]
    assert min(own) == 1, ("the test needs a prompt with nothing of its own to prefill", own)
    assert len(evaluation.length_buckets([n - 1 for n in own])) > 1, "the test needs several buckets"
    plain = _plain_greedy(model, tokenizer, texts, 8)
    with torch.no_grad():
        for in_place in (True, False):
            assert evaluation._generate_with_shared_prefix(model, tokenizer, texts, 8, torch.device("cpu"),
                                                           in_place) == plain, in_place
        unshared = ["Hello, who are you?", "Name three colours of the rainbow, one per line."]
        assert evaluation.shared_prefix_length([tokenizer(t, add_special_tokens=False)["input_ids"] for t in unshared]) == 0
        assert evaluation._generate_with_shared_prefix(model, tokenizer, unshared, 6, torch.device("cpu")) == \
            _plain_greedy(model, tokenizer, unshared, 6)
        assert evaluation._generate_with_shared_prefix(model, tokenizer, texts[2:3], 6, torch.device("cpu")) == \
            _plain_greedy(model, tokenizer, texts[2:3], 6)


def test_the_in_place_cache_answers_as_the_growing_one_under_bf16_autocast(tokenizer, monkeypatch):
    """Under bf16 autocast a layer's new keys are float32 and its new values bf16; the growing cache keeps both in
    float32, and so must the cache written in place (it refused the bf16 values until 2026-12-07: `make setup` failed
    on every machine whose preset chose bf16). Same replies both ways, bf16 emulated where the CPU lacks it (so on
    the model cut to 2 layers)."""
    from conftest import keep_first_layers
    from ftcourse import evaluation
    from ftcourse.models import load_model

    model = load_model()
    keep_first_layers(model, 2)
    head = "Question: what comes next in the list? Answer with the next number only.\n7, "
    texts = [head + "8", head + "9, 11,", head + "14, 21, 28, 35, 42,", head + "10, 13, 16,"]
    made = []
    real = evaluation._in_place_cache
    monkeypatch.setattr(evaluation, "_in_place_cache", lambda *a: made.append(a) or real(*a))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        in_place, growing = (evaluation._generate_with_shared_prefix(model, tokenizer, texts, 6, torch.device("cpu"),
                                                                     flag) for flag in (True, False))
        assert len(made) == 1, "the in-place path must be the one taken under autocast"
        assert in_place == growing
        monkeypatch.undo()
        cache = evaluation._in_place_cache(model.config, 4)
        keys, values = torch.zeros(1, 3, 2, 64), torch.ones(1, 3, 2, 64)
        cache.update(keys, values, 0)
        cache.update(keys[:, :, :1].bfloat16(), values[:, :, :1].bfloat16() * 2, 0)
        assert cache.layers[0].values.dtype == torch.float32 and cache.layers[0].values[0, 0, 2, 0].item() == 2.0


def test_frozen_weights_are_cast_once_for_generation_and_put_back(tokenizer, monkeypatch):
    """Under bf16 autocast, greedy generation stores a frozen model's linear weights in bf16 for its duration (autocast
    would cast them again at every new token): the same replies as casting per call, the head tied to the embeddings
    left alone, and the same float32 tensors back afterwards. Outside autocast nothing changes. On the model cut to 2
    layers (bf16 is emulated where the CPU lacks it)."""
    import contextlib

    from conftest import keep_first_layers
    from ftcourse import evaluation
    from ftcourse.models import load_model

    model = load_model()
    keep_first_layers(model, 2)
    model.requires_grad_(False)
    before = {name: (p.data_ptr(), p.dtype) for name, p in model.named_parameters()}
    seen = []
    with evaluation.frozen_weights_in_autocast_dtype(model):
        seen.append({p.dtype for p in model.parameters()})
    assert seen == [{torch.float32}], "outside autocast the weights stay as they are"
    prompts = ["What comes next: 7, 8, 9,", "What comes next: 14, 21, 28, 35,", "Spell 'cat' backwards."]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        with evaluation.frozen_weights_in_autocast_dtype(model):
            q = model.model.layers[0].self_attn.q_proj.weight
            assert q.dtype == torch.bfloat16
            assert model.lm_head.weight.dtype == torch.float32 and model.model.embed_tokens.weight.dtype == torch.float32
        assert q.dtype == torch.float32
        real, calls = evaluation.frozen_weights_in_autocast_dtype, []
        monkeypatch.setattr(evaluation, "frozen_weights_in_autocast_dtype", lambda m: calls.append(m) or real(m))
        cast_once = [evaluation.generate_answers(model, tokenizer, prompts, max_new_tokens=6, share_prefix=share)
                     for share in (True, False)]
        assert calls == [model, model], "generation must cast the frozen weights once"
        monkeypatch.setattr(evaluation, "frozen_weights_in_autocast_dtype", lambda m: contextlib.nullcontext())
        per_call = [evaluation.generate_answers(model, tokenizer, prompts, max_new_tokens=6, share_prefix=share)
                    for share in (True, False)]
    assert cast_once == per_call and all(any(reply.strip() for reply in replies) for replies in cast_once)
    assert {name: (p.data_ptr(), p.dtype) for name, p in model.named_parameters()} == before


def test_shared_contexts_give_the_same_log_probabilities(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    contexts = ["Question: What colour is the sky?\nAnswer:"] * 3 + ["Question: How many legs has a spider?\nAnswer:"] * 2
    continuations = [" blue", " green", " a very dark red", " eight", " six"]
    plain = continuation_logprobs(model, tokenizer, contexts, continuations, share_contexts=False)
    shared = continuation_logprobs(model, tokenizer, contexts, continuations, share_contexts=True)
    assert shared == pytest.approx(plain, abs=1e-4)


def test_prefill_timing_and_reply_tokens(model_and_tokenizer):
    """The payback measurement's parts: a positive time per query, the tokenizer left as found, token counts."""
    from ftcourse.evaluation import prefill_ms_per_query, reply_tokens

    model, tokenizer = model_and_tokenizer
    side = tokenizer.padding_side
    assert prefill_ms_per_query(model, tokenizer, ["a short prompt", "and a slightly longer prompt"], batch_size=2) > 0
    assert tokenizer.padding_side == side
    assert reply_tokens(tokenizer, ["", "555-123-4567"]) == len(tokenizer("555-123-4567", add_special_tokens=False)["input_ids"]) / 2


def test_a_merged_adapter_gives_the_same_replies_and_probe_picks(tmp_path):
    """The graders evaluate adapters merged into the base (faster); greedy replies and probe picks must not move.

    The adapter has random, non-zero B matrices (a LoRA fresh from training init would be the identity)."""
    from peft import LoraConfig, get_peft_model

    from ftcourse.evaluation import generate_answers
    from ftcourse.models import load_adapter_model, load_model
    from ftcourse.probe import load_probe_items, run_probe
    from ftcourse.tasks import date_task_splits

    torch.manual_seed(0)
    peft_model = get_peft_model(load_model(), LoraConfig(r=8, lora_alpha=16, target_modules="all-linear",
                                                         init_lora_weights=False))
    with torch.no_grad():  # a modest update, like a short fine-tune's, not noise that swamps the model
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.mul_(0.05)
    peft_model.save_pretrained(tmp_path)
    prompts = [e.prompt for e in date_task_splits(8, 16)["validation"]]
    items = load_probe_items()[:24]
    results = []
    for merge in (False, True):
        model, tokenizer = load_adapter_model(tmp_path, base="embedded", merge=merge)
        assert hasattr(model, "peft_config") != merge  # merged: a plain model
        results.append((generate_answers(model, tokenizer, prompts, batch_size=16),
                        run_probe(model, tokenizer, items=items).correct))
    assert results[0] == results[1]
    assert len(set(results[0][0])) > 1  # the replies are answers, not one repeated string
    with pytest.raises(ValueError, match="float base"):
        load_adapter_model(tmp_path, base="embedded", merge=True, base_4bit_compute_dtype="float32")
