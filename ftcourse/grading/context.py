"""What a solution cell finds defined when the grader runs it on its own.

The grader runs each solution cell in a fresh process, not after the notebook's other cells. An exercise's
`provides` (in the registry) names what it defines first; each name here is computed exactly as the
notebook computes it before the exercise (`tests/test_nbgrader_roundtrip.py` checks that the grader's
training of the reference reproduces the notebook's own loss curve). Every exercise's spec lists them.
"""

from __future__ import annotations

from collections.abc import Callable


def _preset(preset, seed):
    return preset


def _seed(preset, seed):
    return seed


def _sft_setup(preset, seed):
    from ..training import SFTSetup

    return SFTSetup


def _lora_config(preset, seed):
    from peft import LoraConfig

    return LoraConfig


def _sft_config(preset, seed):
    from trl import SFTConfig

    return SFTConfig


def _bnb_config(preset, seed):
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig


def _preset_args(preset, seed):  # 02 §6, 03 §3, 05 §5: what the machine and the grouped layout fix in an SFTConfig
    from ..training import preset_sft_args

    return preset_sft_args(preset, _layout(preset, seed))


def _layout(preset, seed):
    return "grouped"  # 03, §3: the layout the notebook trains with


def _training_plan(preset, seed):
    from ..estimator import TrainingPlan

    return TrainingPlan


def _estimate_memory(preset, seed):
    from ..estimator import estimate_memory

    return estimate_memory


def _estimate_step_seconds(preset, seed):
    from ..estimator import estimate_step_seconds

    return estimate_step_seconds


def _longest(preset, seed):  # 01, §4: the longest chat-rendered training example of the phone task
    from ..models import load_tokenizer
    from ..tasks import phone_task_splits
    from ..training import chat_lengths

    return max(chat_lengths(load_tokenizer(preset.model), phone_task_splits(preset.n_train, preset.n_eval)["train"]))


def _shape(preset, seed):  # 01, §4: the model's shape, read from its config
    from transformers import AutoConfig

    from ..estimator import ModelShape
    from ..models import resolve_model_dir

    return ModelShape.from_config(AutoConfig.from_pretrained(resolve_model_dir(preset.model)), name=preset.model)


def _flops_per_s(preset, seed):  # 01, §6: this machine's measured matmul throughput
    from ..estimator import measure_matmul_flops

    return measure_matmul_flops(preset.autocast_dtype or "float32", device=preset.device)


def _reward_config(preset, seed):
    from trl import RewardConfig

    return RewardConfig


def _reward_args(preset, seed):  # 06, §3: what the machine fixes in a RewardConfig
    from ..reward import preset_reward_args

    return preset_reward_args(preset)


def _pair_kinds(preset, seed):  # 06, §1: the kinds of preference pairs the course generates
    from ..preferences import PAIR_KINDS

    return PAIR_KINDS


def _dpo_config(preset, seed):
    from trl import DPOConfig

    return DPOConfig


def _dpo_args(preset, seed):  # 07, §3: what the machine fixes in a DPOConfig
    from ..dpo import preset_dpo_args

    return preset_dpo_args(preset)


def _grpo_config(preset, seed):
    from trl import GRPOConfig

    return GRPOConfig


def _grpo_args(preset, seed):  # 08, §4: what the machine fixes in a GRPOConfig
    from ..grpo import preset_grpo_args

    return preset_grpo_args(preset)


def _embedding_arguments(preset, seed):
    from sentence_transformers import SentenceTransformerTrainingArguments

    return SentenceTransformerTrainingArguments


def _embedding_args(preset, seed):  # 10, §4: what the machine fixes in SentenceTransformerTrainingArguments
    from ..retrieval import preset_embedding_args

    return preset_embedding_args(preset)


def _negatives(preset, seed):  # 10, §5 and §7: the kinds of training data
    from ..retrieval import NEGATIVES

    return NEGATIVES


def _student_args(preset, seed):  # 09, §5: what the machine fixes in the student's SFTConfig
    from ..distill import preset_student_args

    return preset_student_args(preset)


def _data_choices(preset, seed):  # 09, §5 and §7: the student's training data
    from ..distill import DATA_CHOICES

    return DATA_CHOICES


def _judge(preset, seed):  # 06, §1: the course's programmatic judge of a reply
    from ..preferences import judge

    return judge


PROVIDERS: dict[str, Callable] = {
    "preset": _preset, "SEED": _seed, "SFTSetup": _sft_setup, "LAYOUT": _layout, "LoraConfig": _lora_config,
    "SFTConfig": _sft_config, "BitsAndBytesConfig": _bnb_config, "PRESET_ARGS": _preset_args,
    "TrainingPlan": _training_plan, "estimate_memory": _estimate_memory, "estimate_step_seconds": _estimate_step_seconds,
    "longest": _longest, "shape": _shape, "flops_per_s": _flops_per_s, "RewardConfig": _reward_config,
    "REWARD_ARGS": _reward_args, "PAIR_KINDS": _pair_kinds, "DPOConfig": _dpo_config, "DPO_ARGS": _dpo_args,
    "judge": _judge, "GRPOConfig": _grpo_config, "GRPO_ARGS": _grpo_args,
    "SentenceTransformerTrainingArguments": _embedding_arguments, "EMBEDDING_ARGS": _embedding_args,
    "NEGATIVES": _negatives, "DATA_CHOICES": _data_choices, "STUDENT_ARGS": _student_args,
}


def build(names, preset_name: str, seed: int) -> dict:
    """A fresh namespace with `names` defined for a run of `preset_name` and `seed`."""
    from ..presets import get_preset

    preset = get_preset(preset_name)
    namespace: dict = {"__name__": "__learner__"}
    for name in names:
        namespace[name] = PROVIDERS[name](preset, seed)
    return namespace
