"""When to fine-tune: the scenarios of notebook 01's decision guide, and where each answer is taught.

A `Scenario` records what a team knows before spending compute: does a prompt already meet the target,
what data and signals exist, which model, how much accelerator memory. The guide (notebook 01, §3) turns
it into one of `APPROACHES`, each taught by a notebook of the course.
"""

from __future__ import annotations

import dataclasses

from .estimator import TrainingPlan, estimate_memory, fits, known_shape

# approach -> (the notebook that teaches it, when it is the answer)
APPROACHES = {
    "prompting": ("01_when_to_fine_tune", "a zero- or few-shot prompt already meets the target: stop there"),
    "retrieval": ("10_embedding_fine_tuning", "answers depend on facts that change or live in documents"),
    "distillation": ("09_distillation", "a large teacher does the job and a small, cheap model must"),
    "grpo": ("08_grpo", "a program can check answers, but few demonstrations exist"),
    "dpo": ("07_dpo", "people compared outputs: pairs of a chosen and a rejected answer"),
    "sft": ("03_sft", "many demonstrations and a full fine-tune fits in memory"),
    "lora": ("04_lora", "demonstrations, and the 16-bit model plus adapters fits in memory"),
    "qlora": ("05_quantization_qlora", "demonstrations, and only a 4-bit base model fits"),
    "dont_fine_tune": ("01_when_to_fine_tune", "too few examples or no method fits: collect data or pick a smaller model"),
}
MIN_DEMONSTRATIONS = 200  # below this a fine-tune mostly memorises; collect data first
MANY_DEMONSTRATIONS = 10_000  # from here a full fine-tune can use its extra capacity
# The plan the guide sizes every method with: 16-bit weights, 4 x 512 tokens, gradient checkpointing.
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
    has_preference_pairs: bool = False  # chosen vs rejected answers for the same prompt
    n_demonstrations: int = 0  # input -> ideal output examples
    model: str = "smollm2-135m"  # a name in ftcourse.estimator.KNOWN_SHAPES
    gpu_gb: float = 16.0  # accelerator memory available

    def __post_init__(self):
        known_shape(self.model)  # a clear error for an unknown model name
        if self.n_demonstrations < 0 or self.gpu_gb <= 0:
            raise ValueError(f"n_demonstrations must be >= 0 and gpu_gb > 0, got {self.n_demonstrations} and {self.gpu_gb}.")


def method_fits(scenario: Scenario, method: str) -> bool:
    """Whether `method` ("full", "lora" or "qlora") fits the scenario's GPU at the guide's plan."""
    plan = TrainingPlan(method=method, **GUIDE_PLAN)
    return fits(estimate_memory(known_shape(scenario.model), plan), scenario.gpu_gb)


def check_approach(approach: str) -> str:
    """Return `approach` if it is one of APPROACHES, else raise an error listing them."""
    if approach not in APPROACHES:
        raise ValueError(f"{approach!r} is not an approach of the guide; expected one of {', '.join(APPROACHES)}.")
    return approach
