"""The exercise registry: every graded cell of the course, in one place.

Each `Exercise` names its graded (test) cell, its notebook, its points, the solution cells the grader
runs, the names the grader defines before running them, the thresholds it is judged against and the
hints a failing learner reads. The nbgrader preprocessor, the grader process, the notebooks' printed
thresholds and the points tables of the READMEs all read this module; `tests/test_registry.py` checks
that it agrees with the notebooks' grade cells and with both READMEs.
"""

from __future__ import annotations

import dataclasses

KINDS = ("function", "outcome")


@dataclasses.dataclass(frozen=True)
class Exercise:
    """One graded exercise: where it lives, what the grader runs, what it must reach."""

    grade_id: str  # the graded (test) cell's nbgrader grade_id
    notebook: str  # the notebook's slug, e.g. "03_sft"
    number: str  # "3.2": the exercise's number in the notebook's heading
    title: str
    kind: str  # "function": a function checked against the library; "outcome": a fine-tune the grader trains
    points: int
    solutions: tuple[str, ...]  # grade_ids of the solution cells the grader runs, each on its own, in order
    provides: tuple[str, ...]  # names the grader defines before it runs the solution cells (see grading.context)
    thresholds: dict  # metric -> (comparison, value); a string value names a preset field ("step_budget")
    hints: tuple[str, ...]
    summary: str  # one line for the points tables
    study_minutes: int  # a learner's working time on it (reading its spec, writing, running, reading the verdict)

    def threshold_values(self, preset) -> dict:
        """The thresholds with preset-dependent values resolved: {metric: (comparison, number)}."""
        return {name: (cmp, getattr(preset, value) if isinstance(value, str) else value)
                for name, (cmp, value) in self.thresholds.items()}

    def step_budget(self, preset) -> int:
        """Most optimizer steps an outcome exercise may train on this preset: its `steps` threshold."""
        return self.threshold_values(preset)["steps"][1]


STEP_HINT = "use at most preset.step_budget optimizer steps: the grader trains exactly the steps you chose"

EXERCISES = (
    Exercise(
        grade_id="decision_rules_tests", notebook="01_when_to_fine_tune", number="1.1",
        title="encode the decision guide", kind="function", points=3, solutions=("decision_rules",), provides=(),
        thresholds={"share_agreeing": (">=", 1.0)},
        hints=("follow the signal rules in order (the first that applies wins), then the parameterisation rules",
               "GRPO needs a model that sometimes succeeds (base_success_rate > 0) and few demonstrations",
               "rules A-C depend on memory: call method_fits(scenario, 'full' | 'lora' | 'qlora')"),
        summary="`choose_approach` (signal + parameterisation) follows the decision guide on unseen scenarios generated at grading time",
        study_minutes=25,
    ),
    Exercise(
        grade_id="static_bytes_tests", notebook="01_when_to_fine_tune", number="1.2",
        title="count the bytes of weights, gradients and optimizer states", kind="function", points=2,
        solutions=("static_bytes",), provides=(),
        thresholds={"max_relative_error": ("<=", 1e-5)},  # any rule missed is >= 1e-3; rounding is < 3e-6
        hints=("adapters (LoRA and QLoRA) are r(in+out) per targeted linear of every layer, trained and stored in "
               "float32; a full fine-tune's gradients and AdamW states are in the weight dtype",
               "QLoRA: only the decoder's linears are 4-bit (half a byte each) plus one float32 absmax per quant_block "
               "weights, or with double_quant one byte per absmax plus a float32 per 256 blocks",
               "mixed precision (master_weights with 16-bit weights): a float32 master copy and two float32 states, "
               "12 bytes per trainable parameter in the optimizer"),
        summary="`static_bytes` (parameters, gradients, AdamW states, counted by hand) equals the estimator on unseen "
                "model shapes and plans: full in 32 and 16 bits, pure and mixed precision, LoRA, QLoRA with and "
                "without double quantization",
        study_minutes=20,
    ),
    Exercise(
        grade_id="plan_final_outcome", notebook="01_when_to_fine_tune", number="1.3",
        title="plan a fine-tune, estimate its memory, run it", kind="outcome", points=6, solutions=("plan_setup",),
        provides=("preset", "SEED", "longest", "shape", "flops_per_s", "TrainingPlan", "estimate_memory",
                  "estimate_step_seconds"),
        thresholds={
            "memory_estimate_error": ("<=", 0.15),  # |your estimate - measured| / measured, total training bytes
            "measured_memory_gb": ("<=", "memory_budget_gb"),  # the plan, measured by the grader
            "margin_over_few_shot": (">=", 0.15),  # exact match of the adapter minus the few-shot prompt's
            "steps": ("<=", "step_budget"),
        },
        hints=("estimate off: estimate the plan you saved (same batch, seq_len, rank, targets and autocast dtype)",
               "over the memory budget: activations grow with batch_size x seq_len; parameters do not shrink with LoRA",
               "exact match too low: seq_len must hold the longest example (longer ones are cut), or train more steps",
               STEP_HINT),
        summary="memory estimate within 15 % of the grader's byte count of the plan, the plan within the preset's "
                "memory budget; the grader trains the plan: held-out exact match ≥ few-shot + 0.15, steps ≤ budget",
        study_minutes=25,
    ),
    Exercise(
        grade_id="cleaning_tests", notebook="02_data_and_tooling", number="2.1",
        title="write the cleaning pipeline", kind="function", points=4, solutions=("cleaning_pipeline",), provides=(),
        thresholds={"precision": (">=", 0.95), "recall": (">=", 0.95), "per_problem_recall": (">=", 0.8)},
        hints=("run the self-check: it scores the same function on the shipped dump and names the problem it misses",
               "every row is either kept or flagged, and the first of several copies is kept"),
        summary="`clean_dump` on a dump generated at grading time (other rows, other variants of each problem): "
                "precision ≥ 0.95, recall ≥ 0.95, recall ≥ 0.8 per problem",
        study_minutes=35,
    ),
    Exercise(
        grade_id="cleaned_final_outcome", notebook="02_data_and_tooling", number="2.2",
        title="fine-tune on the cleaned data", kind="outcome", points=5,
        solutions=("cleaning_pipeline", "cleaned_setup"), provides=("preset", "SEED", "LoraConfig", "SFTConfig",
                                                                    "PRESET_ARGS"),
        thresholds={"exact_match": (">=", 0.6), "steps": ("<=", "step_budget")},
        hints=("exact match too low: a LoRA adapter needs a learning rate near 1e-3 and more than a handful of steps",
               "check that clean_dump keeps the good rows: a pipeline that flags too much leaves too little to learn from",
               STEP_HINT),
        summary="the grader cleans the shipped dump with your `clean_dump` and trains your `LoraConfig` and `SFTConfig` "
                "on the kept rows: words-to-digits held-out exact match ≥ 0.6, steps ≤ budget",
        study_minutes=20,
    ),
    Exercise(
        grade_id="sft_label_mask_tests", notebook="03_sft", number="3.1",
        title="build the label mask", kind="function", points=2, solutions=("sft_label_mask",), provides=(),
        thresholds={"share_matching": (">=", 1.0)},
        hints=("prompt tokens, up to and including the generation prompt, are -100; the completion keeps its tokens, "
               "<|im_end|> and the newline after it included",),
        summary="label mask equals TRL's on unseen examples",
        study_minutes=20,
    ),
    Exercise(
        grade_id="sft_final_outcome", notebook="03_sft", number="3.2",
        title="fine-tune within the step budget, without forgetting", kind="outcome", points=6,
        solutions=("sft_setup",), provides=("preset", "SEED", "LoraConfig", "SFTConfig", "PRESET_ARGS", "LAYOUT"),
        thresholds={
            "exact_match": (">=", 0.85),  # date-to-ISO exact match on the split
            "probe_accuracy_drop": ("<=", 0.03),  # base accuracy minus tuned accuracy on the general probe
            "probe_perplexity_ratio": ("<=", 1.15),  # tuned / base perplexity on the general text
            "steps": ("<=", "step_budget"),
        },
        hints=("exact match too low: raise the learning rate (LoRA tolerates 1e-3) or use more of the step budget",
               "probe regressed: prefer LoRA over a full fine-tune, lower the learning rate, or train fewer steps",
               STEP_HINT),
        summary="the grader trains your `LoraConfig` and `SFTConfig`: held-out exact match ≥ 0.85, probe accuracy drop ≤ 0.03, "
                "perplexity ratio ≤ 1.15, steps ≤ budget",
        study_minutes=30,
    ),
    Exercise(
        grade_id="lora_layer_tests", notebook="04_lora", number="4.1",
        title="a LoRA layer from scratch", kind="function", points=2, solutions=("lora_layer",), provides=(),
        thresholds={"max_difference": ("<=", 1e-5)},
        hints=("lora_A is (r, in_features), lora_B (out_features, r) and starts at zero; the update is scaled by "
               "alpha / r; the base layer's parameters are frozen",),
        summary="`LoRALinear` equals PEFT's LoRA layer (output, dL/dA, dL/dB, dL/dx within 1e-5; r(in+out) trainable; "
                "base frozen) on three unseen shapes",
        study_minutes=25,
    ),
    Exercise(
        grade_id="capstone_final_outcome", notebook="04_lora", number="4.2",
        title="design a task and beat the base model on it (capstone)", kind="outcome", points=8,
        solutions=("capstone_task", "capstone_setup"), provides=("preset", "SEED", "LoraConfig", "SFTConfig",
                                                                 "PRESET_ARGS"),
        thresholds={
            "train_examples": (">=", 1000),  # rows the grader trained on, drawn from your generator
            "overlap_with_train": ("<=", 0.1),  # share of fresh draws that repeat a training example (exact or near)
            "top_answer_share": ("<=", 0.5),  # the most common held-out answer: a task is more than one reply
            "base_exact_match": ("<=", 0.3),  # don't fine-tune what the model already does
            "margin_over_base": (">=", 0.3),  # the adapter's exact match minus the base model's
            "margin_over_few_shot": (">=", 0.1),  # ... and minus the base model shown three training examples
            "probe_accuracy_drop": ("<=", 0.03),
            "probe_perplexity_ratio": ("<=", 1.15),
            "steps": ("<=", "step_budget"),
        },
        hints=("overlap too high: the task's space is too small; add values and phrasings so fresh draws are new",
               "base too high: the base model already does this task; pick a format or mapping it gets wrong",
               "margin too low: train more of the step budget or raise the learning rate; check the answers are "
               "a function of the prompt (the same prompt must always have the same answer)",
               "few-shot margin too low: a prompt with three solved examples already does most of this task; make "
               "the mapping one that examples in the prompt do not teach, or train the adapter further",
               "probe regressed: lower the learning rate or train fewer steps"),
        summary="the grader draws ≥ 1,000 training and fresh held-out examples from your `make_example` with its own "
                "seed and trains your `LoraConfig` and `SFTConfig`: ≤ 10 % of held-out draws repeat training (exact or near-duplicate), "
                "most common answer ≤ 50 %, base exact match ≤ 0.3, adapter ≥ base + 0.3 and ≥ the base's 3-shot "
                "prompt + 0.1, probe drop ≤ 0.03, perplexity ratio ≤ 1.15, steps ≤ budget",
        study_minutes=45,
    ),
    Exercise(
        grade_id="nf4_tests", notebook="05_quantization_qlora", number="5.1",
        title="NF4 quantize and dequantize", kind="function", points=3, solutions=("nf4_functions",), provides=(),
        thresholds={"index_agreement": (">=", 0.999), "absmax_relative_error": ("<=", 1e-6),
                    "dequantize_max_difference": ("<=", 1e-6)},
        hints=("blocks of 64 along the flattened tensor, the last one partial; scale each by its largest magnitude; "
               "the nearest level wins (compare with the midpoints between levels)",),
        summary="NF4 quantize/dequantize against bitsandbytes on four unseen tensors (partial last block, outlier, "
                "heavy tails): same absmax, ≥ 99.9 % equal indices, dequantisation within 1e-6",
        study_minutes=35,
    ),
    Exercise(
        grade_id="qlora_final_outcome", notebook="05_quantization_qlora", number="5.2",
        title="QLoRA fine-tune to the held-out threshold", kind="outcome", points=6, solutions=("qlora_setup",),
        provides=("preset", "SEED", "BitsAndBytesConfig", "LoraConfig", "SFTConfig", "PRESET_ARGS"),
        thresholds={"exact_match": (">=", 0.8), "steps": ("<=", "qlora_step_budget")},
        hints=("exact match too low: a third of 03's steps needs a higher learning rate or a larger batch",
               "bnb_config: load_in_4bit=True, bnb_4bit_quant_type='nf4', bnb_4bit_compute_dtype=preset.compute_dtype; "
               "double quantization is your choice",
               "use at most preset.qlora_step_budget optimizer steps: the grader trains exactly the steps you chose"),
        summary="the grader loads a fresh 4-bit base from your `BitsAndBytesConfig` (NF4) and trains your `LoraConfig` "
                "and `SFTConfig` on it: held-out exact match ≥ 0.8 with the adapter on that base, "
                "steps ≤ the QLoRA budget (a third of 03's)",
        study_minutes=25,
    ),
    Exercise(
        grade_id="bradley_terry_tests", notebook="06_reward_models_rlhf", number="6.1",
        title="the Bradley-Terry loss from scratch", kind="function", points=2, solutions=("bradley_terry_loss",),
        provides=(), thresholds={"max_difference": ("<=", 1e-5)},  # loss relative to max(1, |loss|); gradients absolute
        hints=("the loss is the batch mean of -log sigmoid(r_chosen - r_rejected - margin); use a numerically stable "
               "log-sigmoid (torch.nn.functional.logsigmoid): log(sigmoid(x)) is -inf for a large negative x",
               "reward centring adds coefficient x mean((r_chosen + r_rejected)^2) to the loss"),
        summary="`bradley_terry_loss` equals TRL's `RewardTrainer` loss and its gradients on four unseen batches "
                "(margins, reward centring, a confident mistake that overflows a naive log-sigmoid) within 1e-5",
        study_minutes=20,
    ),
    Exercise(
        grade_id="reward_final_outcome", notebook="06_reward_models_rlhf", number="6.2",
        title="a reward model that ranks what the judge ranks", kind="outcome", points=6, solutions=("reward_setup",),
        provides=("preset", "SEED", "LoraConfig", "RewardConfig", "REWARD_ARGS", "PAIR_KINDS"),
        thresholds={
            "padded_accuracy": (">=", 0.9),  # concise right over padded right: held-out pairwise accuracy
            "no_count_accuracy": (">=", 0.9),  # a count over no count
            "echo_accuracy": (">=", 0.9),  # an answer over the list restated
            "steps": ("<=", 40),  # reward.REWARD_STEP_BUDGET
        },
        hints=("a kind the reward model never saw in training is a coin toss: choose pair_kinds that cover what the "
               "grader measures (a kind named twice gets twice the share)",
               "accuracy low on every kind: a LoRA reward head needs a learning rate near 1e-3 and most of the 40 steps",
               "use at most 40 optimizer steps: the grader trains exactly the steps you chose"),
        summary="the grader trains your `LoraConfig` (`SEQ_CLS`) and `RewardConfig` with `RewardTrainer` on the pair "
                "kinds you chose: held-out pairwise accuracy ≥ 0.9 on padded, no-count and echo pairs, steps ≤ 40",
        study_minutes=30,
    ),
    Exercise(
        grade_id="dpo_loss_tests", notebook="07_dpo", number="7.1",
        title="the DPO loss from scratch", kind="function", points=2, solutions=("dpo_loss",), provides=(),
        thresholds={"max_difference": ("<=", 1e-5)},  # loss and rewards relative to max(1, |value|); gradients absolute
        hints=("the loss is the batch mean of -log sigmoid(beta * ((policy_chosen - ref_chosen) - (policy_rejected - "
               "ref_rejected))); use torch.nn.functional.logsigmoid: log(sigmoid(x)) is -inf for a large negative x",
               "the rewards are beta * (policy - reference) for each reply, with no gradient (detach them)"),
        summary="`dpo_loss` equals TRL's `DPOTrainer` loss, its implicit rewards and its gradients on four unseen "
                "batches (betas 0.05-2, a confident mistake that overflows a naive log-sigmoid) within 1e-5",
        study_minutes=20,
    ),
    Exercise(
        grade_id="dpo_final_outcome", notebook="07_dpo", number="7.2",
        title="preference pairs DPO can learn from", kind="outcome", points=6, solutions=("dpo_setup",),
        provides=("preset", "SEED", "LoraConfig", "DPOConfig", "DPO_ARGS", "judge"),
        thresholds={
            "judge_gain": (">=", 0.15),  # held-out judge score minus the base model's on the same questions
            "probe_accuracy_drop": ("<=", 0.03),  # base accuracy minus tuned accuracy on the general probe
            "probe_perplexity_ratio": ("<=", 1.15),  # tuned / base perplexity on the general text
            "steps": ("<=", "dpo_step_budget"),
        },
        hints=("judge below the base model's: look at the base model's own replies in section 1 and write pairs it "
               "could have said; replies in a form it never uses pull it out of its distribution",
               "a pair's chosen reply must be the one the judge scores higher; only the count need differ",
               "use at most preset.dpo_step_budget optimizer steps: the grader trains exactly the steps you chose"),
        summary="the grader trains DPO (your `LoraConfig`, `DPOConfig`) on the pairs your `dpo_pair` builds: held-out "
                "judge score ≥ the base model's + 0.15, probe accuracy drop ≤ 0.03, perplexity ratio ≤ 1.15, "
                "steps ≤ two thirds of the budget",
        study_minutes=35,
    ),
    Exercise(
        grade_id="grpo_advantage_tests", notebook="08_grpo", number="8.1",
        title="GRPO's group-relative advantage", kind="function", points=2, solutions=("group_advantages",),
        provides=(),
        thresholds={"max_difference": ("<=", 1e-4)},  # advantages, absolute (they are in units of a group's std)
        hints=("weight each function's rewards and sum them, leaving out a None (NaN): torch.nansum",
               "a completion every function left None is out of its group's mean and std, and its advantage is 0",
               "divide by the group's standard deviation as torch computes it by default (n - 1) plus 1e-4"),
        summary="`group_advantages` equals TRL's `GRPOTrainer` advantages on four unseen batches of rewards (tied "
                "groups, None rewards, several weighted functions) within 1e-4",
        study_minutes=20,
    ),
    Exercise(
        grade_id="grpo_final_outcome", notebook="08_grpo", number="8.2",
        title="verifiable rewards GRPO can learn from", kind="outcome", points=6, solutions=("grpo_setup",),
        provides=("preset", "SEED", "LoraConfig", "GRPOConfig", "GRPO_ARGS"),
        thresholds={
            "right_gain": (">=", 0.12),  # held-out share the task's checker accepts, minus the base model's
            "probe_accuracy_drop": ("<=", 0.03),  # base accuracy minus tuned accuracy on the general probe
            "probe_perplexity_ratio": ("<=", 1.15),  # tuned / base perplexity on the general text
            "steps": ("<=", "grpo_step_budget"),
        },
        hints=("refused before training: your reward pays a reply that does not solve the task as much as the right "
               "answer; pay a reply whose every number is the count (the answer column), and give format a small weight",
               "every group the same reward gives no gradient: a group of 8 replies at temperature 0.7 finds a right "
               "one more often than 4",
               "use at most preset.grpo_step_budget optimizer steps: the grader trains exactly the steps you chose"),
        summary="your `reward_funcs` pay the right answer more than five crafted replies that do not solve the task; "
                "the grader then trains GRPO (your `LoraConfig`, `GRPOConfig`) with them, each called in your own "
                "process: held-out share the task's checker accepts ≥ the base model's + 0.12, probe accuracy drop "
                "≤ 0.03, perplexity ratio ≤ 1.15, steps ≤ two thirds of the budget",
        study_minutes=35,
    ),
    Exercise(
        grade_id="distillation_loss_tests", notebook="09_distillation", number="9.1",
        title="the distillation loss from scratch", kind="function", points=2, solutions=("distillation_loss",),
        provides=(), thresholds={"max_difference": ("<=", 1e-5)},  # loss relative to max(1, |loss|); gradient absolute
        hints=("the soft term is the KL divergence from the teacher's softmax at temperature T to the student's, "
               "summed over the vocabulary and averaged over rows, times T²; compute both sides with log_softmax, "
               "never log(softmax(...)), which overflows on large logits",
               "the hard term is the cross-entropy of the student's logits at temperature 1 with the labels",
               "mix them as alpha x soft + (1 - alpha) x hard"),
        summary="`distillation_loss` (T²-scaled KL to the teacher's soft targets plus the labels' cross-entropy, "
                "mixed by α) equals PyTorch's `kl_div` + `cross_entropy` and its gradient on five unseen batches "
                "(T 0.5-4, α 0-1, logits in the hundreds) within 1e-5",
        study_minutes=20,
    ),
    Exercise(
        grade_id="distill_final_outcome", notebook="09_distillation", number="9.2",
        title="a student that keeps the teacher's skill", kind="outcome", points=6, solutions=("distill_setup",),
        provides=("preset", "SEED", "SFTConfig", "STUDENT_ARGS", "DATA_CHOICES"),
        thresholds={
            "share_of_teacher": (">=", 0.5),  # the student's held-out exact match over the teacher's
            "gain_over_labels_only": (">=", 0.3),  # minus the same student's trained on the 16 labels alone
            "steps": ("<=", 32),
        },
        hints=("gain too low: 16 labelled dates teach the student those dates and little else; the teacher can "
               "answer every other training prompt",
               "share too low: a full fine-tune of the student needs a learning rate near 5e-4, most of the 32 steps, "
               "and batches that show it most of the 400 answered prompts (32 steps of 8 rows show 256)",
               "use at most 32 optimizer steps: the grader trains exactly the steps you chose"),
        summary="the grader trains its 21-layer student (76 % of the teacher's parameters) on the data you chose "
                "(the 16 labels, the teacher's answers, or both) with your temperature, α and `SFTConfig`: held-out "
                "exact match ≥ 0.5 × the teacher's and ≥ the same student trained on the labels alone + 0.3, "
                "steps ≤ 32",
        study_minutes=30,
    ),
    Exercise(
        grade_id="info_nce_tests", notebook="10_embedding_fine_tuning", number="10.1",
        title="the in-batch-negatives loss (InfoNCE) from scratch", kind="function", points=2,
        solutions=("info_nce_loss",), provides=(),
        thresholds={"max_difference": ("<=", 1e-5)},  # loss relative to max(1, |loss|); gradients absolute
        hints=("compare every query with every document of the batch: cosine similarity is the dot product of "
               "L2-normalised embeddings (torch.nn.functional.normalize)",
               "query i's positive is document i; the documents after the batch's positives are hard negatives, "
               "negatives for every query",
               "the loss is the cross-entropy of scale x similarity with target i for row i, averaged over queries"),
        summary="`info_nce_loss` equals sentence-transformers' `MultipleNegativesRankingLoss` and its gradients on "
                "four unseen batches of embeddings (pairs, hard negatives, scales 5-50, unnormalised rows) within 1e-5",
        study_minutes=20,
    ),
    Exercise(
        grade_id="embedding_final_outcome", notebook="10_embedding_fine_tuning", number="10.2",
        title="a retriever that finds the page, on a budget of texts", kind="outcome", points=6,
        solutions=("embedding_setup",),
        provides=("preset", "SEED", "SentenceTransformerTrainingArguments", "EMBEDDING_ARGS", "NEGATIVES"),
        thresholds={
            "mrr_gain": (">=", 0.45),  # held-out MRR@10 minus the base model's on the same questions
            "texts": ("<=", 256),  # retrieval.TEXT_BUDGET: steps x batch x texts a row
        },
        hints=("refused before training: steps x batch x texts a row (2 for pairs, 3 with a mined negative) must be "
               "at most 256; fewer steps, or smaller batches",
               "gain too low: with few steps, a learning rate near 1e-4 moves the model too little; and every other "
               "row of a batch is a negative for each question: compare what larger batches and mined negatives give "
               "for the same texts",
               "mined negatives: in section 5, the margin filter (\"mined, filtered\") gave more than unfiltered "
               "mining; a large margin drops questions with no candidate below it"),
        summary="the grader builds your training data (in-batch pairs, or negatives it mines with the base model, "
                "filtered by your margin) and trains your `SentenceTransformerTrainingArguments` with "
                "`MultipleNegativesRankingLoss`: held-out MRR@10 ≥ the base model's + 0.45, ≤ 256 texts encoded",
        study_minutes=30,
    ),
)

BY_GRADE_ID = {e.grade_id: e for e in EXERCISES}
assert len(BY_GRADE_ID) == len(EXERCISES), "grade_ids must be unique"


def exercise(grade_id: str) -> Exercise:
    """The exercise graded in cell `grade_id`; a clear error for an unknown one."""
    try:
        return BY_GRADE_ID[grade_id]
    except KeyError:
        raise KeyError(f"Unknown grade cell {grade_id!r}; known: {', '.join(BY_GRADE_ID)}.") from None


def for_notebook(notebook: str) -> list[Exercise]:
    """The exercises of one notebook, in the order they appear."""
    return [e for e in EXERCISES if e.notebook == notebook]


def outcome_exercise(notebook: str) -> Exercise:
    """The notebook's outcome exercise (its final, graded fine-tune)."""
    found = [e for e in for_notebook(notebook) if e.kind == "outcome"]
    if not found:
        raise KeyError(f"No outcome exercise in {notebook!r}; notebooks with one: "
                       f"{', '.join(sorted({e.notebook for e in EXERCISES if e.kind == 'outcome'}))}.")
    return found[0]


def notebooks() -> list[str]:
    """Every notebook with exercises, in course order."""
    return sorted({e.notebook for e in EXERCISES})


def points_table() -> str:
    """The markdown points table both READMEs carry (a test checks they match this)."""
    rows = ["| grade_id | exercise | what the grader checks | points |", "|---|---|---|---|"]
    for e in EXERCISES:
        rows.append(f"| `{e.grade_id}` | {e.number} ({e.kind}): {e.title} | {e.summary} | {e.points} |")
    return "\n".join(rows)


READING_WORDS_PER_MINUTE = 150  # technical prose, read to be understood
READING_CODE_LINES_PER_MINUTE = 15  # code lines (not comments) of the cells a learner reads and runs


def study_time(notebook: str, cells) -> dict:
    """A learner's time on a notebook in minutes: reading its prose and code at the rates above (rounded to 5),
    and the exercises' `study_minutes`. `cells`: the released notebook's cells (what the learner reads)."""
    import re

    words = sum(len(re.findall(r"\S+", c.source)) for c in cells if c.cell_type == "markdown")
    lines = sum(1 for c in cells if c.cell_type == "code" for line in c.source.splitlines()
                if line.strip() and not line.strip().startswith("#"))
    reading = 5 * round((words / READING_WORDS_PER_MINUTE + lines / READING_CODE_LINES_PER_MINUTE) / 5)
    exercises = sum(e.study_minutes for e in for_notebook(notebook))
    return {"reading": reading, "exercises": exercises, "total": reading + exercises, "words": words, "code_lines": lines,
            "n_exercises": len(for_notebook(notebook))}


def study_time_sentence(notebook: str, cells) -> str:
    """The sentence each notebook's introduction states (tests/test_registry.py checks it against `study_time`)."""
    t = study_time(notebook, cells)
    hours, minutes = divmod(t["total"], 60)
    total = f"{hours} h {minutes:02d} min" if hours else f"{minutes} min"
    return (f"**Study time:** about {total}: reading about {t['reading']} min (prose at "
            f"{READING_WORDS_PER_MINUTE} words and code at {READING_CODE_LINES_PER_MINUTE} lines a minute) and the "
            f"{t['n_exercises']} exercises about {t['exercises']} min (the registry's estimate for each).")
