"""The grader produces what it grades: an outcome exercise trained here, from the learner's choices.

The learner's solution cells *choose* (a `LoraConfig` and an `SFTConfig`, with a `BitsAndBytesConfig` for
QLoRA; a `TrainingPlan`, a cleaning function's kept rows, a task generator); they run in a child and return
those choices as data. This module checks them, trains
the fine-tune in the grader's own process with the library (the packaged mirror of the notebook's own
training cell, named below), and hands the artifacts it wrote to `evaluate`. The kernel's artifacts are
never read here, so a forged `training.json`, a copied adapter or an over-budget run changes nothing.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

from ..training import MAX_BATCH_FACTOR  # a graded setup may use up to 4x the preset's batch and row length
from . import secret as secrets_
from .context import PROVIDERS
from .evaluate import capstone_draws, evaluate
from .learner import Cells, LearnerCodeError, as_dataclass, as_int, as_number, call, expect, session
from .registry import Exercise
from .verdict import Verdict, failed



def check_setup(raw, preset, what: str = "setup"):
    """The learner's SFTSetup, checked: a LoRA adapter within the step budget and the machine's sizes."""
    from ..training import SFTSetup

    setup = as_dataclass(SFTSetup, raw, what, tuples=("target_modules",))
    expect(setup.method == "lora", f"{what}.method must be 'lora': the graded exercise trains and saves a LoRA "
                                   f"adapter (got {setup.method!r}).")
    expect(setup.num_epochs is None, f"{what}.num_epochs must stay None: a graded fine-tune counts optimizer steps "
                                     "(set max_steps).")
    as_int(setup.max_steps, f"{what}.max_steps", 1, preset.step_budget)
    as_int(setup.batch_size, f"{what}.batch_size", 1, MAX_BATCH_FACTOR * preset.batch_size)
    as_int(setup.lora_r, f"{what}.lora_r", 1, 256)
    as_int(setup.warmup_steps, f"{what}.warmup_steps", 0, preset.step_budget)
    as_int(setup.seed, f"{what}.seed")
    for name in ("max_length", "pack_length"):
        value = getattr(setup, name)
        if value is not None:
            as_int(value, f"{what}.{name}", 8, MAX_BATCH_FACTOR * preset.max_length * max(1, preset.batch_size))
    for name in ("learning_rate", "lora_alpha", "lora_dropout", "weight_decay"):
        expect(math.isfinite(as_number(getattr(setup, name), f"{what}.{name}")), f"{what}.{name} must be finite.")
    expect(all(isinstance(t, str) for t in setup.target_modules), f"{what}.target_modules must be module names.")
    try:
        setup.validate(step_budget=preset.step_budget)
    except ValueError as error:
        raise LearnerCodeError(str(error)) from None
    return setup


def _values(cells: Cells, exercise: Exercise, grade_id: str, names: list[str]) -> dict:
    values = call(cells, [grade_id], "values", {"names": names}, provides=exercise.provides)
    expect(isinstance(values, dict) and all(name in values for name in names),
           f"The solution cell's values could not be read (expected {', '.join(names)}).")
    return values


def _train(model, tokenizer, examples, setup, preset, workdir: Path):
    from ..training import train_sft

    return train_sft(model, tokenizer, examples, setup, preset, workdir / "trainer", progress=False)


def _produce_plan(exercise, cells, preset, secret, workdir):
    """01: mirrors the notebook's training cell of Exercise 1.3 (the plan's fields make the SFTSetup)."""
    from ..estimator import MemoryBreakdown, TrainingPlan, estimate_memory, save_plan
    from ..models import load_model, load_tokenizer
    from ..tasks import phone_task_splits
    from ..training import SFTSetup, save_sft_artifacts

    values = _values(cells, exercise, "plan_setup", ["plan", "estimate", "MAX_STEPS", "LEARNING_RATE"])
    plan = as_dataclass(TrainingPlan, values["plan"], "plan", tuples=("lora_targets",))
    try:
        plan.validate_trainable()
    except ValueError as error:
        raise LearnerCodeError(str(error)) from None
    estimate = values["estimate"]
    expect(isinstance(estimate, dict), "estimate must be the MemoryBreakdown that estimate_memory returns.")
    breakdown = MemoryBreakdown(**{part: int(as_number(estimate.get(part), f"estimate.{part}"))
                                   for part in ("parameters", "gradients", "optimizer_states", "activations")})
    max_steps = as_int(values["MAX_STEPS"], "MAX_STEPS", 1, preset.step_budget)
    learning_rate = as_number(values["LEARNING_RATE"], "LEARNING_RATE")
    expect(plan.method == "lora" and plan.autocast_dtype == preset.autocast_dtype,
           f"The plan must be method='lora' with autocast_dtype={preset.autocast_dtype!r} (this preset's); got "
           f"method={plan.method!r}, autocast_dtype={plan.autocast_dtype!r}.")
    needed = estimate_memory(PROVIDERS["shape"](preset, cells.seed), plan).total / 1e9
    expect(needed <= 3 * preset.memory_budget_gb, f"The plan needs about {needed:.1f} GB by the course's estimator, "
                                                  f"far over the memory budget of {preset.memory_budget_gb} GB: not run.")
    setup = check_setup(vars(SFTSetup(method=plan.method, max_steps=max_steps, learning_rate=learning_rate,
                                      batch_size=plan.batch_size, lora_r=plan.lora_r, lora_alpha=2 * plan.lora_r,
                                      target_modules=plan.lora_targets, max_length=plan.seq_len, seed=cells.seed)), preset)
    tokenizer = load_tokenizer(preset.model)
    tuned, result = _train(load_model(preset.model, preset.device, seed=cells.seed), tokenizer,
                           phone_task_splits(preset.n_train, preset.n_eval)["train"], setup, preset, workdir)
    save_sft_artifacts(tuned, tokenizer, result, setup, workdir)
    save_plan(workdir / "plan.json", plan, breakdown, steps=result.steps)
    return result, {}


def _produce_cleaned(exercise, cells, preset, secret, workdir):
    """02: the learner's clean_dump on the shipped dump chooses the rows; their LoraConfig and SFTConfig train on them."""
    from ..data_quality import DataError, parse_chat_row, prompt_and_answer, shipped_dump
    from ..models import load_model
    from ..tasks import Example

    lines, _, tests = shipped_dump()
    data = call(cells, ["cleaning_pipeline"], "clean",
                {"lines": lines, "tests": [[e.prompt, e.answer] for e in tests], "max_tokens": preset.max_length})
    expect(isinstance(data, dict) and isinstance(data.get("flags"), dict), "clean_dump returned no flags.")
    flagged = {int(i) for i in data["flags"] if str(i).lstrip("-").isdigit()}
    kept = []
    for index, line in enumerate(lines):  # the rows are the dump's own, parsed here: the learner only chose which
        if index in flagged:
            continue
        try:
            kept.append(Example(*prompt_and_answer(parse_chat_row(line, index))))
        except DataError:
            continue
    expect(len(kept) > 0, "clean_dump flagged every row: nothing is left to train on.")
    lora, args, _ = _recipe(exercise, cells, preset, workdir, "cleaned_setup")
    result = _train_and_save(load_model(preset.model, preset.device, seed=cells.seed), kept, lora, args, preset, cells,
                             workdir)
    return result, {"kept_rows": len(kept)}


def _recipe(exercise, cells, preset, workdir, grade_id: str, quantized: bool = False):
    """The learner's LoraConfig and SFTConfig (and, for QLoRA, BitsAndBytesConfig), checked (`checked_recipe`).

    The step budget is the exercise's `steps` threshold. Returns (LoraConfig, SFTConfig, base choices).
    """
    from ..training import RecipeError, checked_recipe

    values = _values(cells, exercise, grade_id, ["lora_config", "sft_config"] + (["bnb_config"] if quantized else []))
    try:
        return checked_recipe(values, preset, exercise.step_budget(preset),
                              PROVIDERS["LAYOUT"](preset, cells.seed), workdir / "trainer")
    except RecipeError as error:
        raise LearnerCodeError(str(error)) from None


def _train_and_save(model, examples, lora, args, preset, cells, workdir: Path, **record):
    """03's recipe (`train_recipe`) on `examples` in the grader's process, its adapter and record saved in `workdir`."""
    from ..models import load_tokenizer
    from ..training import save_recipe_artifacts, train_recipe

    tokenizer = load_tokenizer(preset.model)
    tuned, result = train_recipe(model, tokenizer, examples, lora, args, preset, PROVIDERS["LAYOUT"](preset, cells.seed),
                                 progress=False)
    save_recipe_artifacts(tuned, tokenizer, result, workdir, **record)
    return result


def _produce_recipe(exercise, cells, preset, secret, workdir):
    """03: the learner's LoraConfig and SFTConfig, checked, trained here with SFTTrainer (`train_recipe`)."""
    from ..models import load_model
    from ..tasks import date_task_splits

    lora, args, _ = _recipe(exercise, cells, preset, workdir, "sft_setup")
    result = _train_and_save(load_model(preset.model, preset.device, seed=cells.seed),
                             date_task_splits(preset.n_train, preset.n_eval)["train"], lora, args, preset, cells, workdir)
    return result, {}


def _produce_qlora(exercise, cells, preset, secret, workdir):
    """05: the learner's BitsAndBytesConfig loads a fresh 4-bit base here; their LoraConfig and SFTConfig train it."""
    from ..models import load_quantized_model
    from ..tasks import date_task_splits

    lora, args, base = _recipe(exercise, cells, preset, workdir, "qlora_setup", quantized=True)
    model = load_quantized_model(preset.model, preset.compute_dtype, double_quant=base["double_quant"], seed=cells.seed)
    result = _train_and_save(model, date_task_splits(preset.n_train, preset.n_eval)["train"], lora, args, preset, cells,
                             workdir, double_quant=base["double_quant"])
    return result, base


def partition_pool(pool: list, n_candidates: int, secret: int) -> tuple[list, list]:
    """(train, held-out candidates) from one pool of draws, by a permutation only the grader knows."""
    order = list(range(len(pool)))
    random.Random(secrets_.derived_seed("04_lora/partition", secret)).shuffle(order)
    held = set(order[:n_candidates])
    return [e for i, e in enumerate(pool) if i not in held], [pool[i] for i in sorted(held)]


def _produce_capstone(exercise, cells, preset, secret, workdir):
    """04: one pool drawn from the learner's generator with a derived seed, split by the grader; their configs train."""
    from ..capstone import MIN_TRAIN_EXAMPLES
    from ..models import load_model

    n_candidates = 2 * preset.n_eval
    n_pool = MIN_TRAIN_EXAMPLES + n_candidates
    raw = call(cells, ["capstone_task"], "draw", {"n": n_pool, "seed": secrets_.derived_seed("04_lora/pool", secret)},
               secret_inputs=True)
    train, candidates = partition_pool(capstone_draws(raw, n_pool, "the grader's"), n_candidates, secret)
    lora, args, _ = _recipe(exercise, cells, preset, workdir, "capstone_setup")
    result = _train_and_save(load_model(preset.model, preset.device, seed=cells.seed), train, lora, args, preset, cells,
                             workdir)
    return result, {"train": train, "candidates": candidates}


def check_pair_kinds(raw) -> tuple[str, ...]:
    """The learner's choice of training pairs: kind names from PAIR_KINDS, a repeat giving a kind more share."""
    from ..preferences import PAIR_KINDS

    expect(isinstance(raw, (list, tuple)) and 1 <= len(raw) <= 20 and all(isinstance(k, str) for k in raw),
           f"pair_kinds must be a tuple of 1 to 20 kind names from {PAIR_KINDS}, got {str(raw)[:120]}.")
    unknown = sorted({k for k in raw if k not in PAIR_KINDS})
    expect(not unknown, f"pair_kinds names unknown kinds {unknown}; the course generates {PAIR_KINDS}.")
    return tuple(raw)


def _produce_reward(exercise, cells, preset, secret, workdir):
    """06: the learner's pair kinds choose the training pairs; their LoraConfig (SEQ_CLS) and RewardConfig train a
    reward model here with RewardTrainer (`reward.train_reward_model`, the mirror of the notebook's §3 cell)."""
    from ..models import load_tokenizer
    from ..reward import load_reward_model, reward_pairs, save_reward_adapter, train_reward_model
    from ..training import RecipeError, checked_recipe, write_training_record

    values = _values(cells, exercise, "reward_setup", ["pair_kinds", "lora_config", "reward_config"])
    kinds = check_pair_kinds(values["pair_kinds"])
    try:
        lora, args, _ = checked_recipe({"lora_config": values["lora_config"], "reward_config": values["reward_config"]},
                                       preset, exercise.step_budget(preset), output_dir=workdir / "trainer")
    except RecipeError as error:
        raise LearnerCodeError(str(error)) from None
    tokenizer = load_tokenizer(preset.model)
    model, result = train_reward_model(load_reward_model(preset.model, preset.device, seed=cells.seed), tokenizer,
                                       reward_pairs(kinds, n_train=preset.n_train), lora, args, preset, progress=False)
    save_reward_adapter(model, workdir / "adapter")
    write_training_record(workdir, result.steps, result.losses, result.seconds, pair_kinds=list(kinds))
    return result, {"pair_kinds": list(kinds)}


def _produce_dpo(exercise, cells, preset, secret, workdir):
    """07: the learner's `dpo_pair` builds a pair for each training question (in a child); their LoraConfig and
    DPOConfig train DPO here on those pairs (`dpo.train_dpo` with `dpo.dpo_trainer_class`: the mirror of the
    notebook's training cell)."""
    from ..dpo import checked_pairs, dpo_trainer_class, train_dpo
    from ..models import load_model, load_tokenizer
    from ..preferences import preference_splits
    from ..training import RecipeError, checked_recipe, save_recipe_artifacts

    questions = preference_splits(preset.n_train, preset.n_eval)["train"]
    data = call(cells, ["dpo_setup"], "dpo_pairs", {"questions": [[q.prompt, q.item, q.answer] for q in questions],
                                                     "seed": cells.seed, "names": ["lora_config", "dpo_config"]},
                provides=exercise.provides)
    expect(isinstance(data, dict) and isinstance(data.get("values"), dict)
           and all(name in data["values"] for name in ("lora_config", "dpo_config")),
           "The solution cell's values could not be read (expected lora_config, dpo_config).")
    try:
        configs = {name: data["values"][name] for name in ("lora_config", "dpo_config")}  # the kind is the grader's
        lora, args, _ = checked_recipe(configs, preset, exercise.step_budget(preset), output_dir=workdir / "trainer")
    except RecipeError as error:
        raise LearnerCodeError(str(error)) from None
    tokenizer = load_tokenizer(preset.model)
    try:
        pairs = checked_pairs(questions, data.get("pairs"), tokenizer, args.max_length)
    except ValueError as error:
        raise LearnerCodeError(f"dpo_pair: {error}") from None
    model, result, _ = train_dpo(load_model(preset.model, preset.device, seed=cells.seed), tokenizer, pairs, lora, args,
                                 progress=False, trainer_class=dpo_trainer_class(preset))
    save_recipe_artifacts(model, tokenizer, result, workdir)
    return result, {}


def _checked_rewards(data, names: list[str], n: int) -> list:
    """A child's rewards for one batch as data: a list per function, one finite number or None per completion."""
    import math

    from .child import MAX_REWARD

    expect(isinstance(data, list) and len(data) == len(names)
           and all(isinstance(rs, list) and len(rs) == n for rs in data),
           f"reward_funcs returned no list of {n} rewards for each of its {len(names)} functions.")
    for name, rewards in zip(names, data):
        for row, reward in enumerate(rewards):
            expect(reward is None or (isinstance(reward, (int, float)) and not isinstance(reward, bool)
                                      and abs(reward) <= MAX_REWARD and math.isfinite(reward)),
                   f"{name} returned {str(reward)[:60]} for completion {row}: a reward is a finite number (at most "
                   f"{MAX_REWARD:g} in size) or None.")
    return data


def remote_rewards(ask, names: list[str], weights=None) -> list:
    """Reward functions for the grader's GRPOTrainer that ask the learner's child (`learner.session`) for their
    values: one call per batch (at the first function) returns every function's rewards, checked as data
    (`_checked_rewards`) and against the audit's rule on the batch itself (`_paid_for_the_task`: the audit could
    be told apart from training); the functions named as the learner's, for TRL's logs."""
    import json
    import re

    state: dict = {"key": None, "rewards": None}

    def rewards_of(index: int, prompts, completions, completion_ids=None, answer=None, item=None, **_):
        key = json.dumps([prompts, completions], default=str)  # the batch itself: an object's id can be reused
        if index == 0 or state["key"] != key:  # TRL calls the functions in order, once per batch
            batch = {"prompts": prompts, "completions": completions,
                     "completion_ids": [list(map(int, ids)) for ids in completion_ids],
                     "answer": [int(a) for a in answer], "item": list(item)}
            rewards = _checked_rewards(ask("grpo_rewards", batch), names, len(completions))
            _paid_for_the_task(batch, rewards, weights)
            state["key"], state["rewards"] = key, rewards
        return state["rewards"][index]

    functions = []
    for index, name in enumerate(names):
        function = (lambda i: lambda *a, **k: rewards_of(i, *a, **k))(index)
        function.__name__ = re.sub(r"\W", "_", name)[:40] or f"reward_{index}"
        functions.append(function)
    return functions


def _paid_for_the_task(batch: dict, rewards: list, weights) -> None:
    """The audit's rule on a training batch: among replies to the same prompt, each reply the task's checker accepts
    must earn a strictly higher weighted reward (None counted as 0) than each reply it rejects."""
    import json

    from ..grpo import reply_text, task_checker, weighted_totals
    from ..preferences import Question

    totals = weighted_totals(rewards, weights)
    by_prompt: dict = {}
    for i, (prompt, completion, answer, item) in enumerate(zip(batch["prompts"], batch["completions"],
                                                               batch["answer"], batch["item"])):
        text = reply_text(completion)
        by_prompt.setdefault(json.dumps(prompt, default=str), ([], []))[
            0 if task_checker(Question("", item, int(answer)), text) else 1].append((totals[i], text))
    for right, wrong in by_prompt.values():
        for paid_right, right_text in right:
            for paid_wrong, wrong_text in wrong:
                expect(paid_wrong < paid_right,
                       f"During training your weighted reward paid {wrong_text[:80]!r}, which does not solve the task, "
                       f"{paid_wrong:.3g}, and {right_text[:80]!r}, a right answer to the same question, {paid_right:.3g}: "
                       "a policy can earn it without counting. Every right answer must earn more than every wrong one.")


AUDITED_QUESTIONS = 8  # training questions whose crafted replies a GRPO reward is audited on before training


def audit_rewards(ask, names: list[str], weights, questions, tokenizer) -> None:
    """Before training: on every audited training question the learner's weighted reward must pay the right answer
    strictly more than each crafted reply that does not solve the task (`grpo.crafted_replies`); a reward that pays
    one of them as much is one a policy can earn without counting, refused with the reply named."""
    from ..grpo import audit_batch, audit_failure

    rows, batch = audit_batch(questions, tokenizer)
    failure = audit_failure(rows, _checked_rewards(ask("grpo_rewards", batch), names, len(rows)), weights)
    expect(failure is None, failure or "")


def _produce_grpo(exercise, cells, preset, secret, workdir):
    """08: the learner's `reward_funcs` answer from a child that ran the solution cell once (`learner.session`): first
    on crafted replies (`audit_rewards`: the right answer must earn the most), then on every batch of the grader's
    GRPO run; their LoraConfig and GRPOConfig train here (`grpo.train_grpo` with `grpo.grpo_trainer_class`: the
    mirror of the notebook's training cell). The held-out questions, and the checker that measures them, never
    reach the child."""
    from ..grpo import grpo_trainer_class, train_grpo
    from ..models import load_model, load_tokenizer
    from ..preferences import preference_splits
    from ..training import RecipeError, checked_recipe, save_recipe_artifacts

    questions = preference_splits(preset.n_train, preset.n_eval)["train"]
    with session(cells, ["grpo_setup"], provides=exercise.provides) as ask:
        setup = ask("grpo_setup", {"names": ["lora_config", "grpo_config"]})
        expect(isinstance(setup, dict) and isinstance(setup.get("values"), dict)
               and all(name in setup["values"] for name in ("lora_config", "grpo_config"))
               and isinstance(setup.get("reward_functions"), list) and setup["reward_functions"]
               and all(isinstance(n, str) for n in setup["reward_functions"]),
               "The solution cell's values could not be read (expected reward_funcs, lora_config, grpo_config).")
        names = [name[:60] for name in setup["reward_functions"][:16]]
        expect(len(names) == len(setup["reward_functions"]), "reward_funcs may hold at most 16 functions.")
        try:
            configs = {name: setup["values"][name] for name in ("lora_config", "grpo_config")}  # the kind is ours
            lora, args, _ = checked_recipe(configs, preset, exercise.step_budget(preset), output_dir=workdir / "trainer")
        except RecipeError as error:
            raise LearnerCodeError(str(error)) from None
        expect(args.reward_weights is None or len(args.reward_weights) == len(names),
               f"grpo_config.reward_weights has {len(args.reward_weights or [])} weights for {len(names)} reward "
               "functions: give one weight per function in reward_funcs (or None: all 1).")
        tokenizer = load_tokenizer(preset.model)
        audit_rewards(ask, names, args.reward_weights, questions[:AUDITED_QUESTIONS], tokenizer)
        try:
            model, result, logged = train_grpo(load_model(preset.model, preset.device, seed=cells.seed), tokenizer,
                                               questions, remote_rewards(ask, names, args.reward_weights), lora, args,
                                               progress=False, trainer_class=grpo_trainer_class(preset))
        except RuntimeError as error:  # e.g. sampling from non-finite probabilities: the choices diverged
            raise LearnerCodeError(f"GRPO training with your choices failed: {str(error)[:300]}") from None
    save_recipe_artifacts(model, tokenizer, result, workdir)
    return result, {"reward_curve": [row.get("reward") for row in logged]}


EMBEDDING_NAMES = ["negatives", "relative_margin", "loss_scale", "training_args"]


def checked_embedding_choices(values: dict, preset, exercise) -> dict:
    """Exercise 10.2's choices read back from the child, checked (`retrieval.embedding_choices`) within the
    registry's budget of texts."""
    from ..retrieval import embedding_choices
    from ..training import RecipeError

    try:
        return embedding_choices(values["training_args"], values["negatives"], values["relative_margin"],
                                 values["loss_scale"], preset, exercise.threshold_values(preset)["texts"][1])
    except RecipeError as error:
        raise LearnerCodeError(str(error)) from None


def _produce_embedding(exercise, cells, preset, secret, workdir):
    """10: the learner's choices (the kind of negatives, the margin, the loss's scale, the training arguments);
    the grader builds the training data from the training questions (mining, when chosen, with the base model),
    trains here (`retrieval.train_embedding`, the mirror of the notebook's section 4 cell) and saves the weights."""
    from sentence_transformers import SentenceTransformerTrainingArguments

    from ..retrieval import (load_embedding_model, preset_embedding_args, retrieval_splits, save_embedding,
                             train_embedding, training_data)
    from ..training import TrainResult, write_training_record

    values = _values(cells, exercise, "embedding_setup", EMBEDDING_NAMES)
    chosen = checked_embedding_choices(values, preset, exercise)
    questions = retrieval_splits()["train"]
    miner = load_embedding_model(preset.device, verify=True) if chosen["negatives"] != "in-batch" else None
    dataset, false_negatives = training_data(questions, chosen["negatives"], miner, chosen["relative_margin"])
    expect(len(dataset) >= chosen["args"]["per_device_train_batch_size"],
           f"relative_margin={chosen['relative_margin']:g} left {len(dataset)} training rows of {len(questions)} (a "
           f"question with no candidate below the margin is dropped), fewer than one batch of "
           f"{chosen['args']['per_device_train_batch_size']}: use a smaller margin.")
    args = SentenceTransformerTrainingArguments(output_dir=str(workdir / "trainer"), **preset_embedding_args(preset),
                                                **chosen["args"])
    model, losses, seconds = train_embedding(load_embedding_model(preset.device, seed=cells.seed, verify=True), dataset,
                                             args, scale=chosen["loss_scale"])
    save_embedding(model, workdir / "embedding")
    write_training_record(workdir, len(losses), losses, seconds, texts=chosen["texts"])
    result = TrainResult(losses=losses, steps=len(losses), seconds=seconds, real_tokens=0, slot_tokens=0,
                         step_seconds=[])
    return result, {"texts": chosen["texts"], "false_negatives": false_negatives, "rows": len(dataset)}


def _produce_distillation(exercise, cells, preset, secret, workdir):
    """09: the learner's training data, temperature, alpha and SFTConfig (`distill.distillation_choices`), trained
    here from the grader's own teacher (`distill.train_student`, the mirror of the notebook's section 4 cell)."""
    from trl import SFTConfig

    from ..distill import (DISTILL_NAMES, distillation_choices, distillation_examples, preset_student_args,
                           save_student, train_student)
    from ..tasks import date_task_splits
    from ..training import RecipeError, write_training_record
    from .evaluate import distill_teacher

    values = _values(cells, exercise, "distill_setup", DISTILL_NAMES)
    try:
        chosen = distillation_choices(values["sft_config"], values["training_data"], values["temperature"],
                                      values["alpha"], preset, exercise.step_budget(preset))
    except RecipeError as error:
        raise LearnerCodeError(str(error)) from None
    teacher, tokenizer, record = distill_teacher(preset, "heldout", secret)
    examples = distillation_examples(chosen["training_data"], date_task_splits(preset.n_train, preset.n_eval)["train"],
                                     record["answers"])
    args = SFTConfig(output_dir=str(workdir / "trainer"), **preset_student_args(preset), **chosen["sft"])
    student, result = train_student(teacher, tokenizer, examples, args, chosen["temperature"], chosen["alpha"], preset,
                                    progress=False)
    save_student(student, workdir / "student")
    write_training_record(workdir, result.steps, result.losses, result.seconds)
    return result, {"training_data": chosen["training_data"], "rows": len(examples)}


PRODUCERS = {
    "01_when_to_fine_tune": _produce_plan,
    "02_data_and_tooling": _produce_cleaned,
    "03_sft": _produce_recipe,
    "04_lora": _produce_capstone,
    "05_quantization_qlora": _produce_qlora,
    "06_reward_models_rlhf": _produce_reward,
    "07_dpo": _produce_dpo,
    "08_grpo": _produce_grpo,
    "09_distillation": _produce_distillation,
    "10_embedding_fine_tuning": _produce_embedding,
}


def produce_and_evaluate(exercise: Exercise, cells: Cells, preset, secret: int, workdir: Path) -> Verdict:
    """Train the learner's choices here, then evaluate what was trained on the held-out split."""
    try:
        result, produced = PRODUCERS[exercise.notebook](exercise, cells, preset, secret, Path(workdir))
    except LearnerCodeError as error:
        return failed(exercise, "heldout", str(error))
    produced |= {"steps": result.steps}
    verdict = evaluate(exercise.notebook, Path(workdir), "heldout", preset, secret, produced)
    verdict.metrics["train_losses"] = result.losses  # the run the grader trained: its curve, for agreement checks
    return verdict
