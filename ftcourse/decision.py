"""When to fine-tune: the scenarios of notebook 01's decision guide, and where each answer is taught.

A `Scenario` records what a team knows before spending compute: does a prompt already meet the target,
what data and signals exist, how often the model already succeeds, which model, how much accelerator
memory. The guide (notebook 01, §3) answers in two parts, because they are two different choices:

- the **training signal**: what the model learns from (demonstrations for SFT, preference pairs for DPO,
  a reward program for GRPO, a teacher for distillation), or no training at all (a prompt, retrieval,
  collecting data first);
- the **parameterisation**: which weights train and how they are stored (full, LoRA, QLoRA), decided by
  the data and by what fits in memory.

An answer is one of `NO_TRAINING` or "signal+parameterisation" ("sft+lora", "grpo+qlora"), or
"smaller_model" when a signal exists but no parameterisation fits.
"""

from __future__ import annotations

import dataclasses

from .estimator import TrainingPlan, estimate_memory, fits, known_shape

# answers without a fine-tune -> (the notebook that teaches it, when it is the answer)
NO_TRAINING = {
    "prompting": ("01_when_to_fine_tune", "a zero- or few-shot prompt already meets the target: stop there"),
    "retrieval": ("10_embedding_fine_tuning", "answers depend on facts that change or live in documents"),
    "collect_data": ("01_when_to_fine_tune", "no signal a method can learn from yet: collect demonstrations first"),
    "smaller_model": ("01_when_to_fine_tune", "a signal exists but no parameterisation fits: pick a smaller model"),
}
# training signals -> (notebook, precondition)
SIGNALS = {
    "distillation": ("09_distillation", "a larger teacher does the task well and a smaller model must"),
    "grpo": ("08_grpo", "a program can check answers, the model already gets some right (reward has a gradient), "
                        "and too few demonstrations exist for SFT"),
    "dpo": ("07_dpo", "people compared outputs: pairs of a chosen and a rejected answer for the same prompt"),
    "sft": ("03_sft", f"demonstrations (input -> ideal output), at least MIN_DEMONSTRATIONS of them"),
}
# parameterisations -> (notebook, when)
PARAMETERISATIONS = {
    "full": ("03_sft", "every weight trains: many demonstrations, and a mixed-precision full fine-tune fits"),
    "lora": ("04_lora", "low-rank adapters on the 16-bit model: the default when it fits"),
    "qlora": ("05_quantization_qlora", "adapters on a 4-bit base: when only that fits"),
}
APPROACHES = tuple(NO_TRAINING) + tuple(f"{s}+{p}" for s in SIGNALS for p in PARAMETERISATIONS)

# Measured by the course (README, "How much data a fine-tune needs"; scripts/measure_data_size.py): a LoRA
# fine-tune of the course model learned the date task to the 03 exercise's bar (validation exact match
# >= 0.85) from 32 distinct examples within the step budget; 16 were not enough. The guide keeps a margin.
MIN_DEMONSTRATIONS = 64
MANY_DEMONSTRATIONS = 10_000  # from here a full fine-tune can use its extra capacity (a rule of thumb, not measured here)
# The plan the guide sizes every method with: 16-bit weights, 4 x 512 tokens, gradient checkpointing; a full
# fine-tune in the usual mixed precision (float32 master weights and AdamW states: 16 bytes per parameter).
GUIDE_PLAN = dict(batch_size=4, seq_len=512, weight_dtype="bfloat16", gradient_checkpointing=True)


@dataclasses.dataclass(frozen=True)
class Scenario:
    """What is known before choosing: the target, the data, the signals, the model and the hardware."""

    description: str
    prompting_meets_target: bool = False  # measured: a zero- or few-shot prompt reaches the quality needed
    needs_fresh_knowledge: bool = False  # answers depend on facts that change or on private documents
    wants_smaller_model: bool = False  # the goal is a cheaper/faster model ...
    teacher_available: bool = False  # ... and a larger model already does the task well
    has_verifiable_reward: bool = False  # a program can score an answer (tests pass, the sum is right)
    base_success_rate: float = 0.0  # measured: share of tasks the model already solves in a few tries
    has_preference_pairs: bool = False  # chosen vs rejected answers for the same prompt
    n_demonstrations: int = 0  # input -> ideal output examples
    model: str = "smollm2-135m"  # a name in ftcourse.estimator.KNOWN_SHAPES
    gpu_gb: float = 16.0  # accelerator memory available

    def __post_init__(self):
        known_shape(self.model)  # a clear error for an unknown model name
        if self.n_demonstrations < 0 or self.gpu_gb <= 0:
            raise ValueError(f"n_demonstrations must be >= 0 and gpu_gb > 0, got {self.n_demonstrations} and {self.gpu_gb}.")
        if not 0.0 <= self.base_success_rate <= 1.0:
            raise ValueError(f"base_success_rate is a share in [0, 1], got {self.base_success_rate}.")


def method_fits(scenario: Scenario, method: str) -> bool:
    """Whether `method` ("full", "lora" or "qlora") fits the scenario's GPU at the guide's plan."""
    plan = TrainingPlan(method=method, master_weights=method == "full", **GUIDE_PLAN)
    return fits(estimate_memory(known_shape(scenario.model), plan), scenario.gpu_gb)


def check_approach(approach: str) -> str:
    """Return `approach` if it is one of APPROACHES, else raise an error listing them."""
    if approach not in APPROACHES:
        raise ValueError(f"{approach!r} is not an answer of the guide; expected one of {', '.join(APPROACHES)}.")
    return approach


def notebook_for(approach: str) -> list[str]:
    """The notebooks that teach an answer: one for no training, the signal's and the parameterisation's otherwise."""
    check_approach(approach)
    if approach in NO_TRAINING:
        return [NO_TRAINING[approach][0]]
    signal, parameterisation = approach.split("+")
    return sorted({SIGNALS[signal][0], PARAMETERISATIONS[parameterisation][0]})
