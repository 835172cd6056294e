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
# # 09 · Distillation: a smaller student that keeps the teacher's skill
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/ftcourse/fine-tuning-course/blob/main/course/09_distillation/09_distillation.ipynb)
#
# A fine-tuned model that does its task well can be too large or too slow for where it must run. **Distillation**
# trains a smaller **student** to do what a larger **teacher** does, with the teacher as a source of training
# signal: its probabilities over every token (**soft targets**), or the answers it writes for prompts nobody has
# labelled (**sequence-level distillation**, the synthetic data behind many small models). Here the teacher is
# notebook 03's date fine-tune of the course model; the student is the same model with 9 of its 30 decoder
# layers removed. The question this notebook measures: with only **16 labelled dates**, how much of the teacher's
# skill can the student keep, and which use of the teacher buys it?
#
# **You will be able to**
# 1. build a student by pruning a teacher's layers, and compare their size, speed and score;
# 2. write the distillation loss (temperature, soft targets with the T² factor, the labels' term) and check it
#    against PyTorch's `kl_div` and TRL's distillation loss;
# 3. see, in the Distillation Lab, how the temperature softens the teacher's distribution and how a student
#    distribution follows it under real gradient steps;
# 4. train a student with `SFTConfig` and a distillation trainer, on labels, on soft targets and on the teacher's
#    own answers, on the same budget;
# 5. choose the data and the loss that keep the most of the teacher's skill in the student.
#
# **Prerequisites:** 03 (the date task, `SFTConfig` and `SFTTrainer`, exact match on a held-out split).
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
import os
import time

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from transformers import PrinterCallback
from trl import SFTConfig

from ftcourse import distill, evaluation, labs, plots
from ftcourse.grading import (artifact_dir, assert_outcome, begin_exercise, check_in_kernel, check_recipe,
                              print_exercise, self_check)
from ftcourse.notebook import quiet, seed_everything
from ftcourse.presets import get_preset
from ftcourse.tasks import date_task_splits
from ftcourse.training import to_prompt_completion, write_training_record

preset = get_preset(PRESET)
seed_everything(SEED)
print(preset.describe())

# %% [markdown]
# ## 1 · The teacher
# The teacher is notebook 03's recipe: the course model with a LoRA adapter trained 24 steps on the date task
# (`distill.course_teacher`, the packaged mirror of 03's training cell), its update merged into the weights. It is
# trained on the first run (about a minute on a CPU) and cached. With it, the teacher's greedy answer to each of the
# 400 training prompts, which section 5 uses.

# %%
teacher, tokenizer, teacher_record = distill.course_teacher(preset, distill.teacher_dir(preset))
splits = date_task_splits(preset.n_train, preset.n_eval)
train, validation = splits["train"], splits["validation"]
labelled = train[:distill.LABELLED]  # the only true answers the student's owner has
teacher_answers = teacher_record["answers"]
agree = sum(a == e.answer for a, e in zip(teacher_answers, train)) / len(train)
print(f"{len(train)} training prompts, {len(labelled)} of them labelled; {len(validation)} validation dates")
print(f"the teacher's answers to the training prompts equal the true answers for {agree:.3f} of them")
print(f"e.g. {train[20].prompt!r} -> the teacher says {teacher_answers[20]!r} (true: {train[20].answer!r})")

# %% [markdown]
# ## 2 · The student: the teacher with layers removed
# A student must be **genuinely smaller**. The simplest way to get one that starts with useful weights is to keep
# some of the teacher's decoder layers (and its embeddings, final norm and head) and drop the rest
# (`distill.layer_pruned_student`): here the first 20 of its 30 layers and the last one. Measured side by side:
# parameters, the weights' memory, the time to answer the 64 validation dates, and exact match.

# %%
STUDENT_LAYERS = distill.student_layers(teacher.config.num_hidden_layers)  # 30 layers: 0-19 and 29
student = distill.layer_pruned_student(teacher, STUDENT_LAYERS)


def measured(model, name):
    start = time.perf_counter()
    with preset.autocast():
        em, replies = evaluation.exact_match(model, tokenizer, validation, preset.eval_batch_size)
    params = distill.parameter_count(model)
    return {"model": name, "layers": model.config.num_hidden_layers, "parameters (M)": params / 1e6,
            "weights (MB, fp32)": 4 * params / 1e6, "answer 64 dates (s)": time.perf_counter() - start,
            "exact match": em, "first reply": replies[0]}


size_rows = [measured(teacher, "teacher"), measured(student, "student, untrained")]
params_share = size_rows[1]["parameters (M)"] / size_rows[0]["parameters (M)"]
print(plots.table(size_rows, list(size_rows[0]), floatfmt=".3f"))
print(f"the student has {params_share:.0%} of the teacher's parameters "
      f"({len(STUDENT_LAYERS)} of {teacher.config.num_hidden_layers} layers; the embeddings, 28 M, are shared by both)")

# %% [markdown]
# The student is smaller and answers faster (the table), but cutting nine layers out broke it: its exact match
# (the table's exact-match column) is far below the teacher's, and its first reply shows how. It must be trained back.
# The embeddings are a large share of a model this small, so dropping 30 % of the layers removes 24 % of the
# parameters.
#
# ## 3 · The distillation loss
# At each answer position the teacher gives a distribution over the whole vocabulary. Divided by a
# **temperature** $T$ before the softmax, the logits $z$ give **soft targets** $p^T = \mathrm{softmax}(z / T)$:
# at $T = 1$ the teacher's own distribution, flatter as $T$ grows, so the tokens the teacher ranks second and
# third (its "dark knowledge", Hinton et al., 2015) weigh more. The student $q^T = \mathrm{softmax}(s / T)$ is
# trained towards them, mixed with the ordinary cross-entropy on the labels:
#
# $$\mathcal{L} = \alpha\, T^2\, \mathrm{KL}\big(p^T \,\|\, q^T\big) + (1 - \alpha)\, \mathrm{CE}(s, y),
# \qquad \mathrm{KL}(p \,\|\, q) = \sum_v p_v \left(\log p_v - \log q_v\right),$$
#
# averaged over the answer tokens. The gradient of the KL term with respect to $s$ is $(q^T - p^T)/T$, so it shrinks
# as $T$ grows; the factor $T^2$ gives it back its size. PyTorch computes the KL with `F.kl_div` (its first argument
# is the student's **log**-probabilities), TRL with `GKDTrainer.generalized_jsd_loss` (in `trl.experimental`, an
# unstable API): at $\beta = 0$ it is the same forward KL at temperature $T$, without the $T^2$ and without the
# labels' term. On real logits, the teacher's and the untrained student's at the answer tokens of 8 validation dates:

# %%
os.environ["TRL_EXPERIMENTAL_SILENCE"] = "1"  # its import warns that the API is unstable, as said above
from trl.experimental.gkd.gkd_trainer import GKDTrainer

teacher_logits, targets, owners = distill.answer_logits(teacher, tokenizer, validation[:8])
student_logits, _, _ = distill.answer_logits(student, tokenizer, validation[:8])
rows = []
for T in (1.0, 2.0, 4.0):
    kl = F.kl_div(F.log_softmax(student_logits / T, dim=-1), F.log_softmax(teacher_logits / T, dim=-1),
                  log_target=True, reduction="batchmean")
    trl_kl = GKDTrainer.generalized_jsd_loss(student_logits[None], teacher_logits[None], labels=targets[None], beta=0.0,
                                             temperature=T)  # labels: its mean is over the labelled tokens
    soft = torch.softmax(teacher_logits / T, dim=-1)
    rows.append({"T": T, "KL by F.kl_div": kl.item(), "by TRL (beta 0)": trl_kl.item(), "T^2 x KL": T**2 * kl.item(),
                 "teacher's top-token probability": soft.max(-1).values.mean().item(),
                 "soft-target entropy (nats)": -(soft * soft.clamp_min(1e-30).log()).sum(-1).mean().item()})
print(f"{len(targets)} answer tokens of 8 dates")
print(plots.table(rows, list(rows[0]), floatfmt=".4f"))
assert all(abs(r["KL by F.kl_div"] - r["by TRL (beta 0)"]) < 1e-4 * max(1, r["KL by F.kl_div"]) for r in rows)

# %% [markdown]
# The two libraries agree at every temperature (the table). At $T$ = 1 the teacher is almost sure of each token
# (its top token's probability, and an entropy near 0): its soft targets say little more than the labels. At
# $T$ = 2 the second choices gain weight. At $T$ = 4 the soft targets are nearly uniform: over a vocabulary of
# 49,152 tokens, the thousands of tokens the teacher rules out share most of the mass once the logits are divided
# by 4 (an entropy near $\log 49152 \approx 10.8$ nats). The useful temperatures of a large vocabulary are low.
# The KL falls as $T$ grows; $T^2$ times it does not (the column): the factor keeps the soft term on the scale of the
# labels' term.
#
# ### Exercise 9.1 — the distillation loss from scratch (2 points)
# Write `distillation_loss(student_logits, teacher_logits, labels, temperature, alpha)`: the two logits tensors
# `[rows, vocabulary]` (one row per answer token), `labels` the true token of each row (a `long` tensor), then $T$
# and $\alpha$. Return the loss above as a one-element tensor that gradients flow through, from `log_softmax`
# and sums (not `F.kl_div`: it is what you are compared with, and the grader hides it while your function runs).
# The grader compares your loss and its gradient with respect to the student's logits, within 1e-5, with
# `F.kl_div` + `F.cross_entropy` on five unseen batches ($T$ from 0.5 to 4, $\alpha$ from 0 to 1, and logits in
# the hundreds, where `log(softmax(...))` gives infinities).

# %%
print_exercise("distillation_loss_tests", preset)

# %% nbgrader={"grade": false, "grade_id": "distillation_loss", "locked": false, "schema_version": 3, "solution": true, "task": false}
import torch


def distillation_loss(student_logits, teacher_logits, labels, temperature, alpha):
    """alpha x T^2 x KL(teacher at T || student at T) + (1 - alpha) x cross-entropy with the labels, mean over rows."""
    ### BEGIN SOLUTION
    log_q = torch.log_softmax(student_logits / temperature, dim=-1)
    log_p = torch.log_softmax(teacher_logits / temperature, dim=-1)
    soft = (log_p.exp() * (log_p - log_q)).sum(-1).mean()
    hard = -torch.log_softmax(student_logits, dim=-1).gather(-1, labels[:, None]).mean()
    return alpha * temperature**2 * soft + (1 - alpha) * hard
    ### END SOLUTION


# %% [markdown]
# Self-check against `distill.distillation_loss` (the course's loss: `F.kl_div` and `F.cross_entropy`) on the real
# logits above, at three settings:

# %%
for T, alpha in ((1.0, 0.5), (2.0, 0.5), (4.0, 1.0)):
    mine = student_logits.clone().requires_grad_(True)
    library = student_logits.clone().requires_grad_(True)
    your_loss = distillation_loss(mine, teacher_logits, targets, T, alpha)
    library_loss = distill.distillation_loss(library, teacher_logits, targets, T, alpha)
    your_loss.backward()
    library_loss.backward()
    difference = float((mine.grad - library.grad).abs().max())
    print(f"T {T}, alpha {alpha}: yours {your_loss.item():.6f}, the library's {library_loss.item():.6f}; largest "
          f"gradient difference {difference:.2e}")
    assert abs(your_loss.item() - library_loss.item()) < 1e-5 * max(1, library_loss.item()) and difference < 1e-5

# %% nbgrader={"grade": true, "grade_id": "distillation_loss_tests", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
# Hidden tests compare distillation_loss and its gradient with kl_div + cross_entropy on unseen batches.
### BEGIN HIDDEN TESTS
with quiet():
    check_in_kernel("distillation_loss_tests", preset, globals())
### END HIDDEN TESTS

# %% [markdown]
# ## 4 · The Distillation Lab
# One position of a real prompt: the answer token where the teacher is least sure among the 8 dates above. A
# **student distribution** over the whole vocabulary starts uniform (every token equally likely) and takes 60 real
# gradient steps (Adam) of the loss above towards the teacher's logits at that position, with the true token as
# its label. Headless, the lab runs a fixed schedule: $T$ = 1, 2, 4 at $\alpha$ = 1 (soft targets alone) and
# $T$ = 2 at $\alpha$ = 0 (the label alone); the sliders under it rerun the same steps for any $T$ and $\alpha$.

# %%
entropy = -(torch.softmax(teacher_logits, -1) * torch.log_softmax(teacher_logits, -1)).sum(-1)
position = int(entropy.argmax())
lab_logits, lab_label = teacher_logits[position], int(targets[position])
lab_tokens = lab_logits.topk(6).indices.tolist()
lab_names = [tokenizer.decode([t]) for t in lab_tokens]
example = validation[int(owners[position])]
label_rank = lab_tokens.index(lab_label) if lab_label in lab_tokens else None  # 0: the teacher's first choice
where = ("not among the teacher's top 6" if label_rank is None else
         f"the teacher's {('first', 'second', 'third', 'fourth', 'fifth', 'sixth')[label_rank]} choice")
print(f"{example.prompt!r} -> {example.answer!r}: the answer's token {tokenizer.decode([lab_label])!r}, {where}; "
      f"the teacher's top tokens there {lab_names}")
lab_rows = []
for T, alpha in ((1.0, 1.0), (2.0, 1.0), (4.0, 1.0), (2.0, 0.0)):
    numbers = labs.distillation_lab_numbers(lab_logits, lab_label, T, alpha)
    lab_rows.append({"T": T, "alpha": alpha, "soft-target entropy": numbers["entropy"],
                     "teacher p(1st) at T": numbers["teacher_at_t"][0],
                     "at T 1: teacher p(1st)": numbers["teacher_at_1"][0], "student p(1st)": numbers["student_at_1"][0],
                     "teacher p(2nd)": numbers["teacher_at_1"][1], "student p(2nd)": numbers["student_at_1"][1],
                     "KL at T, first step": numbers["kl"][0], "last step": numbers["kl"][-1]})
print(plots.table(lab_rows, list(lab_rows[0]), floatfmt=".3f"))
fig = labs.distillation_lab_figure(labs.distillation_lab_numbers(lab_logits, lab_label, 2.0, 1.0), lab_names,
                                   title="T 2, alpha 1: 60 gradient steps from a uniform student")

# %%
lab = labs.distillation_lab_widget(lab_logits, lab_label, lab_names)

# %% [markdown]
# Here the teacher hesitates between two tokens, and the true one is one of them (printed above the table: a teacher
# trained under bf16 autocast ranked it second, one trained in float32 first; the two precisions train different
# teachers).
# With soft targets alone ($\alpha$ = 1) the student's distribution converges to the teacher's at every $T$ of the
# table (the KL at the last step is near 0) and keeps the teacher's near-tie: at $T$ = 1 its probabilities of the
# two tokens are the teacher's. The temperature sets how flat the targets are on the way (the entropy column: at
# $T$ = 4 almost uniform over the vocabulary, the first token's probability a few per cent). With the label alone
# ($\alpha$ = 0) the student puts its mass on the true token and gives the other of the two almost nothing: the
# teacher's near-tie is gone, and the KL to the teacher stays high. On the sliders, $\alpha$ = 0.5 settles between
# the two.
#
# ## 5 · Three ways to use the teacher, on the same budget
# The recipe in view: an `SFTConfig` (a full fine-tune of the student: no adapter) and
# `distill.distillation_trainer(teacher, T, alpha)`, TRL's `SFTTrainer` whose `compute_loss` is the loss above
# against the frozen teacher's logits at the same answer positions (they share the tokenizer; given the preset, on a
# CPU it runs the tokens every row of a batch starts with once, as 03's trainer does). Below it trains the
# student on the 16 labelled dates with the teacher's soft targets ($T$ = 2, $\alpha$ = 0.5). Then the packaged
# mirror of the same cell (`distill.train_student`) trains the two other variants, each from a fresh student:
# **16 steps of 16 rows** at learning rate 5e-4 (half of Exercise 9.2's steps), the same seed; one thing changes at
# a time against the first row:
#
# | variant | data | loss |
# |---|---|---|
# | labels only | the 16 labelled dates | cross-entropy ($\alpha$ = 0) |
# | soft targets | the 16 labelled dates | $T$ = 2, $\alpha$ = 0.5 |
# | teacher's answers | all 400 prompts, answered by the teacher | cross-entropy ($\alpha$ = 0) |
#
# The third is sequence-level distillation (Kim and Rush, 2016): the teacher labels the prompts nobody labelled. Each
# run takes 30 to 60 s (bf16) to 60 to 80 s (float32) on the 2-core CPUs measured. The soft targets need the teacher's
# forward pass on each row; the teacher is frozen, so the trainer computes its logits for a row once and reuses them
# when the row comes back.
#
# Each student is scored twice on the 64 validation dates: **exact match** (its greedy answer, whole), and the
# **answer loss**, the mean cross-entropy of the true answer's tokens and its end-of-turn token given the prompt, in
# nats per token (`evaluation.answer_loss`; lower is better: $e^{-\text{loss}}$ is the typical probability the
# student gives each right token, 0.5 at a loss of 0.69). Exact match is what a user sees, but it is coarse: a
# student that has half-learned the format gets a date wrong by one token, and another draw of rows, or the other
# precision, flips a few answers. The answer loss moves with every token's probability, so it ranks the students
# more steadily from run to run. (The table's first and last loss are the *training* loss on the rows each run
# trained on: for the soft targets the $T^2$-scaled mix, not comparable with the other two.)

# %%
STUDENT_ARGS = distill.preset_student_args(preset)  # what the machine fixes: precision, device, row length, rows drawn at random
DEMO_STEPS, DEMO_ROWS, DEMO_LR = 16, 16, 5e-4
args = SFTConfig(output_dir="build/student_soft", max_steps=DEMO_STEPS, per_device_train_batch_size=DEMO_ROWS,
                 learning_rate=DEMO_LR, seed=SEED, **STUDENT_ARGS)
DistillationTrainer = distill.distillation_trainer(teacher, temperature=2.0, alpha=0.5, preset=preset)
soft_student = distill.layer_pruned_student(teacher, STUDENT_LAYERS)
trainer = DistillationTrainer(model=soft_student, args=args, train_dataset=to_prompt_completion(labelled),
                              processing_class=tokenizer)
trainer.remove_callback(PrinterCallback)  # no log line per step: the loss curves are plotted below
start = time.perf_counter()
with quiet():
    trainer.train()
runs = {"soft targets": (soft_student.eval(), time.perf_counter() - start,
                         [h["loss"] for h in trainer.state.log_history if "loss" in h], len(labelled))}
print(f"soft targets: {DEMO_STEPS} steps in {runs['soft targets'][1]:.0f} s", flush=True)

teacher_data = distill.distillation_examples("teacher answers", train, teacher_answers)
for name, data in (("labels only", labelled), ("teacher's answers", teacher_data)):
    demo_args = SFTConfig(output_dir="build/student_demo", max_steps=DEMO_STEPS, per_device_train_batch_size=DEMO_ROWS,
                          learning_rate=DEMO_LR, seed=SEED, **STUDENT_ARGS)
    with quiet():
        model, result = distill.train_student(teacher, tokenizer, data, demo_args, 1.0, 0.0, preset, progress=False)
    runs[name] = (model, result.seconds, result.losses, len(data))
    print(f"{name}: {DEMO_STEPS} steps in {result.seconds:.0f} s", flush=True)

teacher_em = size_rows[0]["exact match"]
variant_rows = []
for name in ("labels only", "soft targets", "teacher's answers"):
    model, seconds, losses, n = runs[name]
    with preset.autocast():
        em, _ = evaluation.exact_match(model, tokenizer, validation, preset.eval_batch_size)
        answer_loss = evaluation.answer_loss(model, tokenizer, validation, preset.eval_batch_size)
    variant_rows.append({"variant": name, "rows": n, "steps": len(losses), "s": seconds, "first loss": losses[0],
                         "last loss": losses[-1], "answer loss": answer_loss, "exact match": em,
                         "share of the teacher's": em / teacher_em})
print(plots.table(variant_rows, list(variant_rows[0]), floatfmt=".3f"))

# %%
fig, ax = plt.subplots(figsize=(6, 3.2))
for name in ("labels only", "soft targets", "teacher's answers"):
    ax.plot(range(1, len(runs[name][2]) + 1), runs[name][2], marker=".", label=name)
ax.set(xlabel="step", ylabel="training loss", yscale="log", title=f"{DEMO_STEPS} steps of {DEMO_ROWS} rows, the same student and seed")
ax.legend()
fig.tight_layout()

# %% [markdown]
# On the 16 labels alone the student's training loss falls close to zero (the curves) while its exact match on new
# dates stays low and its answer loss high (the table): 16 steps of 16 rows show it each labelled date 16 times, and
# it memorises them. The teacher's soft targets on the same 16 dates change the loss, not the data: the student
# still sees only 16 prompts, but at each position the whole of the teacher's distribution; on most runs measured
# its answer loss on new dates was lower than the labels' alone, not on every one (below). The teacher's answers
# to all 400 prompts change the data: 25 times the
# prompts, about 5 % of them wrong (section 1): the student's answer loss is the lowest of the three, well below
# the soft targets', and its exact match far above the labels-only run's. Its loss at the last step is well above
# the labels-only run's: 16 steps of 16 rows show it 256 of the 400 prompts, once each, and it cannot memorise them.
#
# Run with other seeds (the order and choice of the rows each step draws), in the other precision and with another
# teacher, the teacher's answers kept the lowest answer loss on every run measured (the README's distillation section
# and benchmark notes) and their lead over the labels alone in exact match. The soft targets' place was less firm:
# their answer loss sat between the other two on five runs of six, and above the labels' alone on the sixth (0.61
# against 0.55, a teacher trained on the prompt-sharing bf16 path, one thread); exact match ranked them above the
# teacher's answers on one seed and below the labels alone on another: at this budget a few answers flip. With
# scarce labels, what the teacher adds most is **more prompts with answers**; its soft targets on the few labelled
# prompts add less.
#
# ## 6 · In the field: distillation and synthetic data
# DistilBERT (Sanh et al., 2019) built its student the way section 2 does (every other layer of BERT) and trained it
# with soft targets, a cosine loss on the hidden states and the masked-language loss: 40 % fewer parameters,
# 97 % of BERT's score on GLUE. For generative models the teacher's *text* is the common channel: the Phi-3 report
# (Abdin et al., 2024) trains small models on heavily filtered web data and synthetic data written by larger models;
# what it does not disclose are the prompts, the generators and the filters, the inputs that decide what the student
# learns. Gemma 2 (2024) trained its small models on the teacher's token distributions instead of the next token,
# which needs the teacher's logits at every position, what section 5's soft-target trainer does. On-policy
# distillation (GKD, Agarwal et al., 2024, TRL's `GKDTrainer`) lets the student generate and the teacher score its
# tokens. Two cautions: a student learns the teacher's mistakes with its answers (section 1: about 5 % of them), and a
# licence may forbid training on a model's outputs.
#
# ## 7 · Your student
# ### Exercise 9.2 — a student that keeps the teacher's skill (6 points)
# Choose the training data, the loss and the run of the student (section 2's, 76 % of the teacher's parameters)
# that the grader trains from its own teacher and scores on **held-out dates it draws**: exact match at least
# **0.5 × the teacher's** on the same dates, and at least **0.3 above the same student trained on the 16 labels
# alone** for the whole budget (32 steps of 8 rows at learning rate 5e-4, `distill.labels_only_args`), within
# **32 steps**. Section 5 trained half the steps, of twice the rows (its labels-only run is not this reference);
# its table prints each run's share of the teacher's exact match.
# - `training_data`: one of `DATA_CHOICES` (`"labels"`, `"teacher answers"`, `"teacher answers, labels where
#   known"`: the teacher's answers with the 16 true ones in place of its own);
# - `temperature` (0.5 to 10) and `alpha` (0 to 1): the loss (alpha 0 is the cross-entropy alone; define
#   `temperature` anyway);
# - `sft_config`: an `SFTConfig` with `**STUDENT_ARGS` (choose `max_steps`, `per_device_train_batch_size` up to
#   4 × the preset's batch, `learning_rate`, `lr_scheduler_type`, `warmup_steps`, `weight_decay`, `seed`).
#
# The grader runs your cell in a process of its own (with `preset`, `SEED`, `SFTConfig`, `STUDENT_ARGS` and
# `DATA_CHOICES` defined as here), builds the data from its teacher's answers, **trains the student itself**
# (`distill.train_student`) and scores what it trained.

# %%
DATA_CHOICES = distill.DATA_CHOICES
begin_exercise("distill_final_outcome", preset)

# %% nbgrader={"grade": false, "grade_id": "distill_setup", "locked": false, "schema_version": 3, "solution": true, "task": false}
### BEGIN SOLUTION
training_data = "teacher answers, labels where known"  # 400 prompts with answers; the 16 true ones where known
temperature = 1.0
alpha = 0.0
# Section 5's lesson: what the teacher adds is prompts with answers, so show the student most of them: 32 steps of
# 12 rows are 384 rows (of 8 only 256), at the rate section 5 trained at.
sft_config = SFTConfig(output_dir="build/student_exercise", max_steps=32, per_device_train_batch_size=12,
                       learning_rate=5e-4, seed=SEED, **STUDENT_ARGS)
### END SOLUTION

# %% [markdown]
# The grader's checks of your choices, then your run, as the grader will train it:

# %%
chosen = check_recipe("distill_final_outcome", preset, sft_config=sft_config, training_data=training_data,
                      temperature=temperature, alpha=alpha)
your_data = distill.distillation_examples(training_data, train, teacher_answers)
with quiet():
    your_student, your_result = distill.train_student(teacher, tokenizer, your_data, sft_config, temperature, alpha,
                                                      preset, progress=False)
distill.save_student(your_student, artifact_dir("09_distillation") / "student")
write_training_record(artifact_dir("09_distillation"), your_result.steps, your_result.losses, your_result.seconds)
print(f"{your_result.steps} steps on {len(your_data)} rows in {your_result.seconds:.0f} s; loss "
      f"{your_result.losses[0]:.3f} -> {your_result.losses[-1]:.3f}")

# %% [markdown]
# Self-check on the public validation dates (the same grader, in a separate process):

# %%
verdict = self_check("09_distillation", preset)

# %% nbgrader={"grade": true, "grade_id": "distill_final_outcome", "locked": true, "points": 6, "schema_version": 3, "solution": false, "task": false}
# Hidden test: the same grader on its held-out dates, in a separate process.
### BEGIN HIDDEN TESTS
with quiet():
    assert_outcome("09_distillation", preset)
### END HIDDEN TESTS

# %% [markdown]
# ## Summary
# - A student made by pruning a teacher's layers starts with the teacher's weights but not its skill; it must be
#   trained back, and it is smaller and faster (section 2).
# - The distillation loss mixes $T^2$ times the KL to the teacher's soft targets with the labels' cross-entropy;
#   you wrote it and matched `F.kl_div` (TRL's `generalized_jsd_loss` at $\beta$ 0 is the same KL).
# - Temperature flattens the soft targets and shows the student the teacher's whole ranking (the Distillation Lab).
# - With few labels, the teacher's answers to unlabelled prompts gave the student the most (section 5): the data
#   matters more than the loss.
# - **The mistake to remember:** judging a student by its training loss. On 16 labels the loss went to zero while
#   exact match on new dates stayed low; score a student on prompts it never saw, against the teacher on the same.
#
# **Next:** 10 fine-tunes an embedding model, the retriever of a RAG system.

# %% tags=["course-record"]
# The course table's record of this run, read by `make course` and by the tests of each stated claim: in the
# instructor's notebook only (the learner's copy has no such cell).
from ftcourse.reporting import write_results

m = verdict.metrics
by_variant = {row["variant"]: row for row in variant_rows}
label_only_top2 = (lab_rows[3]["student p(1st)"], lab_rows[3]["student p(2nd)"])
write_results("09_distillation", base_metric=m.get("labels_only_exact_match", float("nan")),
              tuned_metric=m.get("exact_match", float("nan")), metric="exact match, validation dates",
              teacher_exact_match=teacher_em, untrained_student_exact_match=size_rows[1]["exact match"],
              params_share=params_share, teacher_answer_seconds=size_rows[0]["answer 64 dates (s)"],
              student_answer_seconds=size_rows[1]["answer 64 dates (s)"], teacher_agreement=agree,
              kl_t1=rows[0]["KL by F.kl_div"], kl_t4=rows[2]["KL by F.kl_div"],
              entropy_t1=rows[0]["soft-target entropy (nats)"], entropy_t4=rows[2]["soft-target entropy (nats)"],
              lab_soft_kl_last=max(row["last step"] for row in lab_rows[:3]),
              lab_soft_pair_gap=max(abs(row["student p(1st)"] - row["at T 1: teacher p(1st)"])
                                    + abs(row["student p(2nd)"] - row["teacher p(2nd)"]) for row in lab_rows[:3]),
              lab_teacher_first=lab_rows[0]["at T 1: teacher p(1st)"], lab_teacher_second=lab_rows[0]["teacher p(2nd)"],
              lab_label_rank=label_rank, lab_label_only_kl_last=lab_rows[3]["last step"],
              # the label-only student's probabilities of the label and of the other near-tied token (NaN when the
              # label is not one of the teacher's top two: the claim then fails rather than reading the wrong column)
              lab_label_only_label_p=label_only_top2[label_rank] if label_rank in (0, 1) else float("nan"),
              lab_label_only_other_p=label_only_top2[1 - label_rank] if label_rank in (0, 1) else float("nan"),
              lab_entropies=[row["soft-target entropy"] for row in lab_rows[:3]],
              t2_kl=[r["T^2 x KL"] for r in rows],
              **{f"demo_{k.replace(' ', '_').replace(chr(39), '')}_{key}": v[column] for k, v in by_variant.items()
                 for key, column in (("em", "exact match"), ("last_loss", "last loss"), ("answer_loss", "answer loss"))},
              exercise_seconds=your_result.seconds, exercise_share=m.get("share_of_teacher", float("nan")))
