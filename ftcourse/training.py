"""Training with TRL's SFTTrainer and PEFT LoRA, configured from a preset.

Notebook 03 teaches the recipe in view: a `LoraConfig`, an `SFTConfig` (the learner's choices next to
`preset_sft_args`, what the machine and the batch layout fix) and `SFTTrainer`. This module holds the
packaged mirror of that recipe (`train_recipe`, what the grader trains from a learner's two configs), the
checks of a learner's configs (`recipe_choices`), and the course's shorthand for the same recipe,
`SFTSetup` -> `train_sft`, which the demos use to vary one choice at a time (layouts, ranks, learning
rates). Configuration flows one way: preset -> choices -> TRL/PEFT configs -> trainer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path

from .estimator import ALL_LINEAR
from .presets import Preset
from .tasks import Example

LAYOUTS = ("padded", "grouped", "packed")


@dataclasses.dataclass
class SFTSetup:
    """The choices of a supervised fine-tune: method, sizes and the batch layout."""

    method: str = "lora"  # "lora" or "full"
    max_steps: int = 20
    learning_rate: float = 1e-3
    batch_size: int = 8
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    target_modules: Sequence[str] = ALL_LINEAR
    use_rslora: bool = False  # scale the update by alpha / sqrt(r) instead of alpha / r (notebook 04)
    layout: str = "padded"  # "padded" | "grouped" | "packed"
    pack_length: int | None = None  # tokens per packed row; None = batch_size * preset.max_length // 2
    max_length: int | None = None  # longest row in tokens (longer examples are cut); None = preset.max_length
    warmup_steps: int = 2
    weight_decay: float = 0.0
    lr_scheduler_type: str = "cosine"
    num_epochs: float | None = None  # when set, train for epochs instead of max_steps
    prompt_format: str = "chat"  # "chat" (the model's template) or "plain" (notebook 02's wrong-template demo)
    seed: int = 0

    def validate(self, step_budget: int | None = None) -> None:
        """Raise a clear error for a choice the trainer would reject later, or one over the budget."""
        if self.method not in ("lora", "full"):
            raise ValueError(f"SFTSetup.method must be 'lora' or 'full', got {self.method!r}.")
        if self.layout not in LAYOUTS:
            raise ValueError(f"SFTSetup.layout must be one of {LAYOUTS}, got {self.layout!r}.")
        if self.max_steps < 1 or self.batch_size < 1:
            raise ValueError(f"max_steps and batch_size must be >= 1, got {self.max_steps} and {self.batch_size}.")
        if not 0 < self.learning_rate < 1:
            raise ValueError(f"learning_rate must be in (0, 1), got {self.learning_rate}.")
        if step_budget is not None and self.num_epochs is None and self.max_steps > step_budget:
            raise ValueError(f"max_steps={self.max_steps} is over this exercise's step budget of {step_budget}.")


@dataclasses.dataclass
class TrainResult:
    """What a training run measured."""

    losses: list[float]  # training loss at each logged step
    steps: int
    seconds: float  # wall time of training, first step excluded from the throughput
    real_tokens: int  # non-padding tokens seen after the first step
    slot_tokens: int  # tokens including padding after the first step
    step_seconds: list[float]

    @property
    def real_tokens_per_s(self) -> float:
        return self.real_tokens / max(sum(self.step_seconds[1:]), 1e-9)

    @property
    def padding_fraction(self) -> float:
        return 1 - self.real_tokens / max(self.slot_tokens, 1)


def to_prompt_completion(examples: Sequence[Example], prompt_format: str = "chat"):
    """A `datasets.Dataset` in TRL's prompt-completion format (completion-only loss).

    "chat": conversational, rendered by the model's chat template; "plain": `PLAIN_TEMPLATE` text, which
    TRL trains as plain language modelling of the completion (it appends the EOS token).
    """
    from datasets import Dataset

    from .evaluation import PLAIN_TEMPLATE

    if prompt_format == "plain":
        return Dataset.from_list([{"prompt": PLAIN_TEMPLATE.format(e.prompt), "completion": " " + e.answer} for e in examples])
    if prompt_format != "chat":
        raise ValueError(f"prompt_format must be 'chat' or 'plain', got {prompt_format!r}.")
    return Dataset.from_list([
        {"prompt": [{"role": "user", "content": e.prompt}], "completion": [{"role": "assistant", "content": e.answer}]}
        for e in examples
    ])


class _CountingCollator:
    """Wraps TRL's collator to count real and padded token slots of every batch it builds."""

    def __init__(self, inner):
        self.inner = inner
        self.real: list[int] = []
        self.slots: list[int] = []

    def __call__(self, features):
        batch = self.inner(features)
        ids = batch["input_ids"]
        mask = batch.get("attention_mask")
        self.real.append(int(mask.sum()) if mask is not None else int(ids.numel()))
        self.slots.append(int(ids.numel()))
        return batch


def lora_config(setup: SFTSetup):
    """PEFT's LoraConfig for a causal LM from the setup."""
    from peft import LoraConfig

    return LoraConfig(r=setup.lora_r, lora_alpha=setup.lora_alpha, lora_dropout=setup.lora_dropout,
                      target_modules=list(setup.target_modules), use_rslora=setup.use_rslora, task_type="CAUSAL_LM")


def preset_sft_args(preset: Preset, layout: str = "grouped") -> dict:
    """The `SFTConfig` arguments that the machine and the batch layout fix, not the learner.

    Precision and device come from the preset; activation (gradient) checkpointing is off (+45 % time on a CPU
    and no memory pressure at this size), under its transformers 5 name (TRL's configs default it to on, and
    the old name `gradient_checkpointing` prints a deprecation warning); "grouped" batches arrive already
    ordered in length buckets (`length_grouped_order`), so the trainer must not shuffle them; a loss is logged
    at every step.
    """
    if layout not in ("padded", "grouped"):
        raise ValueError(f"preset_sft_args takes layout 'padded' or 'grouped', got {layout!r} (packing is "
                         "SFTSetup(layout='packed'), which notebook 03 compares).")
    return preset_machine_args(preset) | dict(
        max_length=preset.max_length, train_sampling_strategy="sequential" if layout == "grouped" else "random")


def preset_machine_args(preset: Preset) -> dict:
    """The trainer-config arguments every course trainer shares (SFT, reward, RLOO): precision and device from
    the preset, activation checkpointing off, a loss logged at every step, nothing saved or reported."""
    return dict(bf16=preset.bf16, fp16=preset.fp16, use_cpu=preset.device == "cpu", activation_checkpointing=False,
                logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True, dataloader_num_workers=0)


def sft_config(setup: SFTSetup, preset: Preset, output_dir: str | Path):
    """TRL's SFTConfig from a setup and a preset; CPU-friendly defaults made explicit."""
    from trl import SFTConfig

    packed = setup.layout == "packed"
    args = preset_sft_args(preset, "padded" if packed else setup.layout)
    args["max_length"] = ((setup.pack_length or setup.batch_size * preset.max_length // 2) if packed
                          else (setup.max_length or preset.max_length))
    return SFTConfig(
        output_dir=str(output_dir),
        max_steps=-1 if setup.num_epochs else setup.max_steps,
        num_train_epochs=setup.num_epochs or 1,
        per_device_train_batch_size=1 if packed else setup.batch_size,
        learning_rate=setup.learning_rate,
        lr_scheduler_type=setup.lr_scheduler_type,
        warmup_steps=setup.warmup_steps,
        weight_decay=setup.weight_decay,
        packing=packed,
        seed=setup.seed,
        data_seed=setup.seed,
        **args,
    )


# ---------------------------------------------------------------- a learner's LoraConfig and SFTConfig, checked

SFT_CHOICES = ("max_steps", "learning_rate", "per_device_train_batch_size", "lr_scheduler_type", "warmup_steps",
               "weight_decay", "seed")
LORA_CHOICES = ("r", "lora_alpha", "lora_dropout", "target_modules", "use_rslora")
SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup")
_WHERE = ("output_dir", "logging_dir", "run_name", "base_model_name_or_path", "revision")  # places, not choices
_MACHINE = ("bf16", "fp16", "use_cpu")  # the grader's machine decides these; its own values are trained
MAX_BATCH_FACTOR = 4  # a graded recipe may use up to 4x the preset's batch (memory stays bounded)


@dataclasses.dataclass(frozen=True)
class RecipeKind:
    """What a graded recipe trains: its trainer's config class, the LoRA task type, the choices it leaves open.

    "sft" is notebooks 02-05's LoraConfig + SFTConfig (SFTTrainer); "reward" is notebook 06's LoraConfig with
    task_type="SEQ_CLS" + RewardConfig (RewardTrainer), which also lets the learner choose which layers get
    adapters and the reward-centring coefficient; "dpo" is notebook 07's LoraConfig + DPOConfig (DPOTrainer),
    with beta a choice; "grpo" is notebook 08's LoraConfig + GRPOConfig (GRPOTrainer), with the group, sampling,
    completion length, beta and reward weights choices. `names` are the solution cell's variables.
    """

    name: str
    config_class: str
    task_type: str
    lora_choices: tuple[str, ...]
    train_choices: tuple[str, ...]
    names: tuple[str, str]


RECIPE_KINDS = {
    "sft": RecipeKind("sft", "SFTConfig", "CAUSAL_LM", LORA_CHOICES, SFT_CHOICES, ("lora_config", "sft_config")),
    "reward": RecipeKind("reward", "RewardConfig", "SEQ_CLS", LORA_CHOICES + ("layers_to_transform",),
                         SFT_CHOICES + ("center_rewards_coefficient",), ("lora_config", "reward_config")),
    "dpo": RecipeKind("dpo", "DPOConfig", "CAUSAL_LM", LORA_CHOICES, SFT_CHOICES + ("beta",), ("lora_config", "dpo_config")),
    "grpo": RecipeKind("grpo", "GRPOConfig", "CAUSAL_LM", LORA_CHOICES,
                       SFT_CHOICES + ("beta", "num_generations", "temperature", "max_completion_length", "reward_weights",
                                      "scale_rewards"), ("lora_config", "grpo_config")),
}
GRPO_COMPLETION_TOKENS = (4, 32)  # a graded GRPO run's max_completion_length: generation is a CPU step's cost


class RecipeError(ValueError):
    """A LoraConfig or trainer config that the exercise cannot train, with the field and what is expected. The
    message quotes the learner's values, cut to `MAX_MESSAGE` characters (a value can be megabytes)."""

    MAX_MESSAGE = 600

    def __init__(self, message: str):
        super().__init__(message if len(message) <= self.MAX_MESSAGE else message[:self.MAX_MESSAGE] + " [...]")


CONFIG_TYPES = ("LoraConfig", "SFTConfig", "RewardConfig", "DPOConfig", "GRPOConfig", "BitsAndBytesConfig",
                "SentenceTransformerTrainingArguments")


def _recipe_kind(kind: str) -> RecipeKind:
    if kind not in RECIPE_KINDS:
        raise ValueError(f"kind must be one of {list(RECIPE_KINDS)}, got {kind!r}.")
    return RECIPE_KINDS[kind]


def config_dict(config, what: str, expected: str | None = None) -> dict:
    """A LoraConfig, SFTConfig, RewardConfig or BitsAndBytesConfig as plain data (its `to_dict()`, target modules
    sorted). `expected` names the class a wrong object should have been (guessed from `what` otherwise)."""
    if isinstance(config, dict):
        data = dict(config)
    elif hasattr(config, "to_dict") and type(config).__name__ in CONFIG_TYPES \
            and type(config).__name__ == (expected or type(config).__name__):
        data = {key: (str(value.value) if hasattr(value, "value") else value)  # enums (quant_method) as strings
                for key, value in config.to_dict().items()}
    else:
        expected = expected or ("LoraConfig" if what.startswith("lora") else "BitsAndBytesConfig"
                                if what.startswith("bnb") else "RewardConfig" if what.startswith("reward")
                                else "DPOConfig" if what.startswith("dpo") else "GRPOConfig" if what.startswith("grpo")
                                else "SFTConfig")
        raise RecipeError(f"{what} must be a {expected}, got {type(config).__name__}: the graded exercise trains "
                          f"from the configs your cell builds.")
    if isinstance(data.get("target_modules"), (set, frozenset, tuple)):
        data["target_modules"] = sorted(data["target_modules"])
    return data


def _integer(value, what: str, low: int, high: int | None = None) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise RecipeError(f"{what} must be an integer {bound}, got {value!r}.")
    return value


def _real(value, what: str, low: float, high: float, low_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or value > high \
            or value < low or (low_open and value == low):
        raise RecipeError(f"{what} must be a number in {'(' if low_open else '['}{low}, {high}], got {value!r}.")
    return float(value)


def _same(a, b) -> bool:
    norm = lambda v: sorted(v) if isinstance(v, (set, frozenset)) else (list(v) if isinstance(v, tuple) else v)
    return norm(a) == norm(b)


def _trainer_config(kind: RecipeKind):
    import trl

    return getattr(trl, kind.config_class)


def recipe_choices(lora, sft, preset: Preset, layout: str = "grouped", step_budget: int | None = None,
                   kind: str = "sft") -> tuple[dict, dict]:
    """The learner's choices in a LoraConfig and a trainer config (objects or their `to_dict()`), checked.

    `sft` is the SFTConfig (kind "sft") or RewardConfig (kind "reward"). A choice is one of the kind's
    `lora_choices` / `train_choices`, within the step budget and the machine's sizes. The arguments
    `preset_sft_args` fixes are the grader's own. Every other field must keep its default: a grader that
    trains the recipe must train what the learner's own run trained, so a field it would not train is an
    error that names it, never a silent difference.
    """
    from peft import LoraConfig

    recipe = _recipe_kind(kind)
    lora_name, train_name = recipe.names
    if lora is None:
        raise RecipeError(f"{lora_name} must be a LoraConfig, got None: the graded exercise trains and saves a "
                          "LoRA adapter (a full fine-tune has no adapter to grade).")
    lora = config_dict(lora, lora_name, "LoraConfig")
    budget = step_budget or preset.step_budget
    lora_choices = {k: lora[k] for k in recipe.lora_choices if k in lora}
    if str(lora.get("task_type")) not in (recipe.task_type, f"TaskType.{recipe.task_type}"):
        what = "a causal language model" if recipe.task_type == "CAUSAL_LM" else "a sequence scorer: the reward head"
        raise RecipeError(f"{lora_name}.task_type must be {recipe.task_type!r} ({what}), got {lora.get('task_type')!r}.")
    if "r" in lora_choices:  # checked values are stored back: 8.0 must train as 8
        lora_choices["r"] = _integer(lora_choices["r"], f"{lora_name}.r", 1, 256)
    _real(lora_choices.get("lora_alpha", 8), f"{lora_name}.lora_alpha", 0, 4096, low_open=True)
    _real(lora_choices.get("lora_dropout", 0.0), f"{lora_name}.lora_dropout", 0, 0.5)
    targets = lora_choices.get("target_modules")
    if not (isinstance(targets, list) and targets and all(t in ALL_LINEAR for t in targets)):
        raise RecipeError(f"{lora_name}.target_modules must be a list of module names from {list(ALL_LINEAR)}, "
                          f"got {targets!r}.")
    if not isinstance(lora_choices.get("use_rslora", False), bool):
        raise RecipeError(f"{lora_name}.use_rslora must be True or False, got {lora_choices['use_rslora']!r}.")
    layers = lora_choices.get("layers_to_transform")
    if isinstance(layers, int) and not isinstance(layers, bool):
        layers = lora_choices["layers_to_transform"] = [layers]
    if layers is not None:
        n_layers = preset_layers(preset)
        if not (isinstance(layers, (list, tuple)) and layers and len(set(layers)) == len(layers)
                and all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < n_layers for i in layers)):
            raise RecipeError(f"{lora_name}.layers_to_transform must be None (every layer) or distinct layer "
                              f"indices from 0 to {n_layers - 1}, got {layers!r}.")
        lora_choices["layers_to_transform"] = sorted(layers)
    sft_choices = train_choices(sft, train_name, preset, layout, budget, kind)
    try:
        lora_reference = LoraConfig(task_type=recipe.task_type, **lora_choices).to_dict()
    except (TypeError, ValueError) as error:
        raise RecipeError(f"These choices do not make a valid config: {error}") from None
    only_choices_differ(lora_name, "LoraConfig", lora, lora_reference, lora_choices, recipe.lora_choices)
    return lora_choices, sft_choices


def train_choices(config, what: str, preset: Preset, layout: str, budget: int, kind: str = "sft") -> dict:
    """The learner's choices in a trainer config (the object or its `to_dict()`) of a recipe `kind`, checked as
    `recipe_choices` checks them: within the step budget and the machine's sizes, every other field at the
    grader's value. Notebook 09's student (a full fine-tune, no adapter) is checked by this alone."""
    recipe = _recipe_kind(kind)
    sft = config_dict(config, what, recipe.config_class)
    sft_choices = {k: sft[k] for k in recipe.train_choices if k in sft}
    train_name = what
    steps = sft_choices.get("max_steps", -1)
    if isinstance(steps, int) and not isinstance(steps, bool) and steps > budget:
        raise RecipeError(f"{train_name}.max_steps must be at most {budget} (the step budget), got {steps}.")
    sft_choices["max_steps"] = _integer(steps, f"{train_name}.max_steps (a graded fine-tune counts optimizer steps)",
                                        1, budget)
    _real(sft_choices.get("learning_rate", 5e-5), f"{train_name}.learning_rate", 0, 1, low_open=True)
    if "per_device_train_batch_size" in sft_choices:
        sft_choices["per_device_train_batch_size"] = _integer(sft_choices["per_device_train_batch_size"],
                                                              f"{train_name}.per_device_train_batch_size", 1,
                                                              MAX_BATCH_FACTOR * preset.batch_size)
    schedule_choices(sft_choices, train_name, budget)
    if sft_choices.get("center_rewards_coefficient") is not None:
        _real(sft_choices["center_rewards_coefficient"], f"{train_name}.center_rewards_coefficient", 0, 1)
    if "beta" in sft_choices:  # GRPO may leave the KL term out (its default); DPO's beta scales its reward
        _real(sft_choices["beta"], f"{train_name}.beta", 0, 100, low_open=kind != "grpo")
    if kind == "grpo":
        _grpo_choices(sft_choices, train_name, preset)
    fixed = _fixed_args(kind, preset, layout)
    try:
        sft_reference = _trainer_config(recipe)(output_dir="recipe", **fixed, **sft_choices).to_dict()
    except (TypeError, ValueError) as error:
        raise RecipeError(f"These choices do not make a valid config: {error}") from None
    only_choices_differ(train_name, recipe.config_class, sft, sft_reference, sft_choices, recipe.train_choices)
    return sft_choices


def schedule_choices(choices: dict, what: str, budget: int) -> None:
    """A trainer config's schedule choices, checked (in place): a known scheduler, warmup (steps within `budget`, or
    a float share below 1), weight decay in [0, 1], a 32-bit seed."""
    if choices.get("lr_scheduler_type", "linear") not in SCHEDULERS:
        raise RecipeError(f"{what}.lr_scheduler_type must be one of {list(SCHEDULERS)}, "
                          f"got {choices.get('lr_scheduler_type')!r}.")
    warmup = choices.get("warmup_steps", 0)
    if isinstance(warmup, float) and not warmup.is_integer():
        _real(warmup, f"{what}.warmup_steps (a float below 1 is a share of the steps)", 0, 0.999)
    elif "warmup_steps" in choices:
        choices["warmup_steps"] = _integer(warmup, f"{what}.warmup_steps", 0, budget)
    _real(choices.get("weight_decay", 0.0), f"{what}.weight_decay", 0, 1)
    if "seed" in choices:
        choices["seed"] = _integer(choices["seed"], f"{what}.seed", 0, 2**32 - 1)


def only_choices_differ(what: str, class_name: str, data: dict, reference: dict, chosen: dict, open_: Sequence[str],
                        how: str = "", machine: Sequence[str] = _MACHINE) -> None:
    """A config read back as data (`data`) against the config the grader builds from the checked choices
    (`reference`, a `to_dict()`): a field the class lacks, or one other than the exercise's `open_` choices and the
    `machine`'s fields that differs from the grader's, is a RecipeError naming it (`how`: how to get the grader's
    values)."""
    foreign = sorted(set(data) - set(reference) - set(_MACHINE) - set(_WHERE))
    if foreign:  # a config of another class, read back as data: its fields give it away
        raise RecipeError(f"{what} has fields {', '.join(foreign[:4])} that a {class_name} does not have: it must be a "
                          f"{class_name}.")
    for key, value in data.items():
        if key in chosen or key in machine or key in _WHERE:
            continue
        if not _same(value, reference[key]):
            raise RecipeError(f"{what}.{key} = {repr(value)[:80]}: this exercise keeps it at {reference[key]!r}{how}, "
                              f"so that the grader trains exactly what your run trained. Change only "
                              f"{', '.join(open_)}.")


def _fixed_args(kind: str, preset: Preset, layout: str) -> dict:
    """What the machine fixes in a recipe's trainer config: a GRPO run samples its own replies (no row length or
    layout), every other kind trains on rows (`preset_sft_args`)."""
    return preset_machine_args(preset) if kind == "grpo" else preset_sft_args(preset, layout)


def _grpo_choices(choices: dict, what: str, preset: Preset) -> None:
    """A GRPOConfig's own choices, checked (in place): a group of 2 to 8 replies per prompt, at most twice the
    preset's batch of replies a step (a whole number of groups), a sampling temperature in [0.1, 2], at most
    `GRPO_COMPLETION_TOKENS` new tokens, finite reward weights, one of TRL's reward scalings."""
    from .grpo import MAX_GENERATIONS

    group = choices["num_generations"] = _integer(choices.get("num_generations", 8), f"{what}.num_generations", 2,
                                                  MAX_GENERATIONS)
    batch = choices["per_device_train_batch_size"] = _integer(choices.get("per_device_train_batch_size", 8),
                                                              f"{what}.per_device_train_batch_size", group,
                                                              2 * preset.batch_size)
    if batch % group:
        raise RecipeError(f"{what}.per_device_train_batch_size ({batch} replies a step) must be a multiple of "
                          f"num_generations ({group}): each prompt's group is sampled whole.")
    if "temperature" in choices:  # a float: transformers refuses an int temperature while it samples
        choices["temperature"] = _real(choices["temperature"], f"{what}.temperature", 0.1, 2)
    if "max_completion_length" in choices:
        choices["max_completion_length"] = _integer(choices["max_completion_length"], f"{what}.max_completion_length",
                                                    *GRPO_COMPLETION_TOKENS)
    else:
        raise RecipeError(f"{what}.max_completion_length must be set (between {GRPO_COMPLETION_TOKENS[0]} and "
                          f"{GRPO_COMPLETION_TOKENS[1]} tokens): TRL's default of 512 is far past a counting answer.")
    weights = choices.get("reward_weights")
    if weights is not None and not (isinstance(weights, list) and weights and all(
            isinstance(w, (int, float)) and not isinstance(w, bool) and abs(w) <= 100 and math.isfinite(w)
            for w in weights)):
        raise RecipeError(f"{what}.reward_weights must be None (all 1) or a list of numbers in [-100, 100], one per "
                          f"reward function, got {weights!r}.")
    if choices.get("scale_rewards", "group") not in ("group", "batch", "none"):
        raise RecipeError(f"{what}.scale_rewards must be 'group', 'batch' or 'none', got {choices['scale_rewards']!r}.")


def preset_layers(preset: Preset) -> int:
    """The number of decoder layers of the preset's model (what `layers_to_transform` indexes)."""
    import json

    from .models import resolve_model_dir

    return int(json.loads((Path(resolve_model_dir(preset.model)) / "config.json").read_text())["num_hidden_layers"])


# what a QLoRA exercise's BitsAndBytesConfig must say; its compute dtype is the machine's (`preset.compute_dtype`)
QLORA_BASE = {"load_in_4bit": True, "load_in_8bit": False, "bnb_4bit_quant_type": "nf4"}
_BNB_MACHINE = ("bnb_4bit_compute_dtype", "quant_method", "_load_in_4bit", "_load_in_8bit")


def qlora_base_choices(bnb) -> dict:
    """The learner's BitsAndBytesConfig, checked: a 4-bit NF4 base; double quantization is the one choice.

    Returns {"double_quant": bool}, what `models.load_quantized_model` loads. Every other field keeps its
    default, so the grader loads the base the learner's run trained on.
    """
    from transformers import BitsAndBytesConfig

    data = config_dict(bnb, "bnb_config")
    for key, wanted in QLORA_BASE.items():
        if data.get(key) != wanted:
            raise RecipeError(f"bnb_config.{key} must be {wanted!r} for QLoRA's base (4-bit NF4 weights), "
                              f"got {data.get(key)!r}.")
    double_quant = data.get("bnb_4bit_use_double_quant", False)
    if not isinstance(double_quant, bool):
        raise RecipeError(f"bnb_config.bnb_4bit_use_double_quant must be True or False, got {double_quant!r}.")
    reference = BitsAndBytesConfig(**QLORA_BASE, bnb_4bit_use_double_quant=double_quant).to_dict()
    for key, value in data.items():
        if key in _BNB_MACHINE or key in QLORA_BASE or key == "bnb_4bit_use_double_quant" or key not in reference:
            continue
        if not _same(value, reference[key]):
            raise RecipeError(f"bnb_config.{key} = {value!r}: this exercise keeps it at {reference[key]!r}. Choose "
                              f"load_in_4bit, bnb_4bit_quant_type, bnb_4bit_use_double_quant and "
                              f"bnb_4bit_compute_dtype=preset.compute_dtype only.")
    return {"double_quant": double_quant}


def recipe_configs(lora_choices: dict, sft_choices: dict, preset: Preset, layout: str, output_dir: str | Path,
                   kind: str = "sft"):
    """(LoraConfig, trainer config) from checked choices, with this preset's fixed arguments (the grader's side)."""
    from peft import LoraConfig

    recipe = _recipe_kind(kind)
    return (LoraConfig(task_type=recipe.task_type, **lora_choices),
            _trainer_config(recipe)(output_dir=str(output_dir), **_fixed_args(kind, preset, layout), **sft_choices))


def checked_recipe(configs: dict, preset: Preset, step_budget: int, layout: str | None = None,
                   output_dir: str | Path = "recipe"):
    """(LoraConfig, trainer config, base choices) from a solution's configs, checked as the grader checks them.

    `configs` holds `lora_config` and `sft_config` (an SFT recipe, layout "grouped" unless given), or
    `reward_config` (a reward-model recipe, kind "reward", layout "padded"), or `dpo_config` (a DPO recipe, kind
    "dpo", layout "padded"), and `bnb_config` in a QLoRA exercise (the base choices are then
    `qlora_base_choices`'s, else {}). A RecipeError names the field that the exercise cannot train.
    """
    kind = ("reward" if "reward_config" in configs else "dpo" if "dpo_config" in configs
            else "grpo" if "grpo_config" in configs else "sft")
    layout = layout or ("padded" if kind in ("reward", "dpo") else "grouped")  # pairs train shuffled
    lora_name, train_name = RECIPE_KINDS[kind].names
    base = qlora_base_choices(configs["bnb_config"]) if "bnb_config" in configs else {}
    lora_choices, sft_choices = recipe_choices(configs[lora_name], configs[train_name], preset, layout, step_budget,
                                               kind)
    return (*recipe_configs(lora_choices, sft_choices, preset, layout, output_dir, kind), base)


def common_prefix_width(input_ids, attention_mask=None) -> int:
    """How many leading columns every row of a batch holds the same real tokens in (the chat template's system turn,
    a task's instruction): 0 for a single row or when the first tokens differ."""
    import torch

    if input_ids.dim() != 2 or input_ids.size(0) < 2:
        return 0
    same = (input_ids == input_ids[:1]).all(0)
    if attention_mask is not None:
        same &= attention_mask.bool().all(0)
    return int(same.size(0) if bool(same.all()) else torch.argmin(same.int()))


def completion_logits(model, inputs: dict, mask, share_prefix: bool = False, counter: list | None = None):
    """`model`'s logits at the positions `mask` selects (`labels[:, 1:] != -100`: those that predict a completion
    token), one row per position in row-major order: the backbone on every position, the LM head on these alone.
    `share_prefix`: the columns every row starts with (`common_prefix_width`) go through the backbone once, for the
    whole batch (`shared_prompt_backbone`; same values up to rounding); rows with their own position ids (packed)
    are run as they are. `counter` collects the (rows, columns) of each backbone call."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    backbone_inputs = {k: inputs[k] for k in ("input_ids", "attention_mask", "position_ids") if k in inputs}
    width = 0
    if share_prefix and "position_ids" not in backbone_inputs:
        width = common_prefix_width(backbone_inputs["input_ids"], backbone_inputs.get("attention_mask"))
    with shared_prompt_backbone(model, width, counter) if width else contextlib.nullcontext():
        hidden = getattr(base, base.base_model_prefix)(**backbone_inputs, use_cache=False).last_hidden_state
    return base.get_output_embeddings()(hidden[:, :-1][mask])


def completion_only_trainer(share_prefix: bool = False):
    """`SFTTrainer` with its loss computed on the completion positions only: the CPU preset's trainer.

    TRL 1.16's SFTTrainer scores every position of a row through its fused LM head and computes the entropy
    and the token accuracy over the vocabulary at each one, for its logs; on a CPU (no Triton kernels) it
    cannot skip the positions without a label. This subclass runs the backbone, then the LM head on the
    labeled positions alone: the same loss (mean negative log-likelihood of the completion tokens, over the
    number of such tokens TRL passes as `num_items_in_batch`), with the LM head's work cut to the share of
    tokens that carry a label. Token accuracy is logged on those positions; entropy is not.
    `share_prefix`: the columns every row of a batch starts with (the chat template's system turn and the task's
    instruction: 37 of a batch of 8 date rows' 93 columns) go through the backbone once per batch, not once per row
    (`completion_logits`); the same loss and gradients up to rounding (tests/test_training.py).
    """
    import torch
    import torch.nn.functional as F
    from trl import SFTTrainer

    share_prefix_default = share_prefix

    class CompletionOnlySFTTrainer(SFTTrainer):
        share_prefix = share_prefix_default
        backbone_positions = None  # a list to collect each backbone call's (rows, columns): tests, benchmarks

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels = inputs["labels"][:, 1:]
            mask = labels != -100
            with self.accelerator.autocast():
                logits = completion_logits(model, inputs, mask, self.share_prefix, self.backbone_positions)
            targets = labels[mask]
            count = mask.sum() if num_items_in_batch is None else num_items_in_batch
            loss = F.cross_entropy(logits.float(), targets, reduction="sum") / torch.as_tensor(count).clamp(min=1)
            mode = "train" if self.model.training else "eval"
            with torch.no_grad():
                accuracy = (logits.argmax(-1) == targets).float().mean().item() if targets.numel() else 0.0
            self._metrics[mode]["mean_token_accuracy"].append(accuracy)
            if return_outputs:
                raise ValueError("CompletionOnlySFTTrainer computes no full logits; use SFTTrainer for compute_metrics.")
            return loss

    return CompletionOnlySFTTrainer


def trainer_class(preset: Preset):
    """The trainer a preset trains with: TRL's `SFTTrainer`, or on a CPU its completion-only-loss subclass."""
    from trl import SFTTrainer

    return completion_only_trainer(preset.share_prompt_forward) if preset.lm_head_on_labels_only else SFTTrainer


@contextlib.contextmanager
def labelled_positions_only():
    """Within it, TRL's fused LM head scores the labelled positions only, as it does on a GPU with Triton.

    TRL 1.16's fused head (`trl.trainer.utils.add_fused_lm_head`) projects only the positions that carry a label
    when Triton runs the kernel; elsewhere it projects every position (prompt and padding too) and zeroes the
    unlabelled ones afterwards, because on other accelerators a changing number of rows would recompile its
    kernels. A CPU recompiles nothing. Each position's log-probability and entropy are computed row by row, so
    the labelled positions get the same values either way; the unlabelled ones are zero either way.
    """
    from trl.trainer import utils as trl_utils

    original = trl_utils._use_triton
    trl_utils._use_triton = lambda device: True
    try:
        yield
    finally:
        trl_utils._use_triton = original


MIN_SHARED_COLUMNS = 8  # a shared prefix shorter than this saves less than its second backbone call costs


def _unshareable(model) -> str | None:
    """Why the rows of `model`'s batches may not share a prompt's computation, or None: a dropout that is active
    (its masks would be shared too: `nn.Dropout` modules, LoRA's among them, or the attention's own rate), activation
    checkpointing while training (its layers drop the cache the replies need), a 4-bit base (each of the two passes
    would dequantize every weight again)."""
    import torch

    llm = _causal_lm(model)
    training = any(m.training for m in llm.modules())
    if any(isinstance(m, torch.nn.Dropout) and m.p > 0 and m.training for m in llm.modules()):
        return "dropout"
    if training and getattr(getattr(llm, "config", None), "attention_dropout", 0.0):
        return "attention dropout"
    if training and getattr(llm, "is_activation_checkpointing", False):
        return "activation checkpointing"
    if getattr(llm, "is_loaded_in_4bit", False) or getattr(llm, "is_loaded_in_8bit", False):
        return "quantized base"
    return None


@contextlib.contextmanager
def _patched(obj, name: str, value):
    """`obj.name = value` within the block; whatever the instance held before (a hook's wrapper) afterwards."""
    missing = object()
    before = vars(obj).get(name, missing)
    setattr(obj, name, value)
    try:
        yield
    finally:
        if before is missing:
            delattr(obj, name)
        else:
            setattr(obj, name, before)


def _causal_lm(model):
    """The causal LM inside `model`: under a distributed wrapper (`.module`) and PEFT's model (`get_base_model`)."""
    llm = getattr(model, "module", model)
    return llm.get_base_model() if hasattr(llm, "get_base_model") else llm


def _repeated_rows(input_ids, attention_mask, columns: int):
    """Rows whose first `columns` ids and mask are the same, or None when no row repeats another: (the first row of
    each distinct group, each row's group)."""
    import torch

    heads = torch.cat([input_ids[:, :columns], attention_mask[:, :columns].to(input_ids.dtype)], dim=1)
    distinct, inverse = torch.unique(heads, dim=0, return_inverse=True)
    rows = input_ids.size(0)
    if distinct.size(0) == rows:
        return None
    index = torch.arange(rows, device=inverse.device)
    first = torch.full((distinct.size(0),), rows, device=inverse.device, dtype=index.dtype).scatter_reduce(
        0, inverse, index, reduce="amin")
    return first, inverse


@contextlib.contextmanager
def shared_prompt_backbone(model, prompt_length: int, counter: list | None = None):
    """Within it, the backbone of `model` (a causal LM, PEFT-wrapped or not) runs each distinct prompt of a batch once.

    GRPO and RLOO score groups of sampled replies to the same prompt: a batch of 16 rows holds 2 prompts 8 times
    each, and TRL's forward runs the model over all 16 copies of ~76 prompt tokens to score ~12 reply tokens per
    row; DPO scores each prompt twice, with its chosen and its rejected reply. Here the first `prompt_length`
    columns (GRPO's and RLOO's left-padded prompts; for DPO's and SFT's right-padded rows, the columns every row's
    prompt fills) of the distinct rows go through the backbone once, with the cache kept; the cache and those hidden
    states are indexed back out to every row (`index_select`, so each copy's gradient flows back into the one
    computation), and the rest of each row runs on that cache. Each position sees the same tokens at the same
    position ids and the same attention mask as in the full forward, so the hidden states are the same up to
    floating-point rounding (tests/test_rlhf.py); the LM head and the loss that follow are TRL's. The full forward
    runs instead when `_unshareable` gives a reason, when every prompt is distinct or shorter than
    `MIN_SHARED_COLUMNS`, for inputs other than ids and a mask, and whenever the prompt pass left no cache of the
    prompt's length. `counter`, if given, collects the (rows, columns) of each backbone call (for tests and
    benchmarks): the prompt pass and the rest, or the whole batch.
    """
    import torch
    from transformers.modeling_outputs import BaseModelOutputWithPast

    backbone = _causal_lm(model).base_model
    original = backbone.forward

    def count(ids):
        if counter is not None:
            counter.append(tuple(ids.shape))

    def forward(input_ids=None, attention_mask=None, **kwargs):
        use_cache = kwargs.pop("use_cache", None)

        def full():
            count(input_ids if input_ids is not None else torch.empty(0, 0))
            return original(input_ids=input_ids, attention_mask=attention_mask, use_cache=use_cache, **kwargs)

        width = input_ids.size(1) if input_ids is not None else 0
        asked = {k for k, v in kwargs.items() if v is not None and v is not False and k != "return_dict"}
        if (input_ids is None or attention_mask is None or attention_mask.dim() != 2 or asked
                or not MIN_SHARED_COLUMNS <= prompt_length < width or _unshareable(model)):
            return full()
        groups = _repeated_rows(input_ids, attention_mask, prompt_length)
        if groups is None:
            return full()
        first, inverse = groups
        prompts = original(input_ids=input_ids[first, :prompt_length],
                           attention_mask=attention_mask[first, :prompt_length], use_cache=True)
        cache = prompts.past_key_values
        if cache is None or cache.get_seq_length() != prompt_length:  # a layer that keeps no cache: run it whole
            return full()
        count(input_ids[first, :prompt_length])
        cache.batch_select_indices(inverse)
        replies = original(input_ids=input_ids[:, prompt_length:], attention_mask=attention_mask,
                           past_key_values=cache, use_cache=True)
        count(input_ids[:, prompt_length:])
        hidden = torch.cat([prompts.last_hidden_state.index_select(0, inverse), replies.last_hidden_state], dim=1)
        return BaseModelOutputWithPast(last_hidden_state=hidden)

    with _patched(backbone, "forward", forward):
        yield


@contextlib.contextmanager
def shared_prompt_generation(model, counter: list | None = None):
    """Within it, `model.generate` runs each distinct prompt of a batch once before sampling its group's replies.

    TRL's GRPO and RLOO sample their groups from a batch in which each prompt is repeated once per reply, and
    `generate` runs its first forward (the prefill) over every copy. Here every token of each distinct left-padded
    row but its last goes through the model once, at the position ids `generate` gives it (the mask's running count),
    the cache is indexed out to every row, and `generate` goes on from it: each row's last prompt token, then the
    replies, sampled as before from the same random stream. The same tokens at the same positions under the same mask,
    so the same logits up to floating-point rounding. `generate` runs as it is when `_unshareable` gives a reason,
    when every prompt is distinct or shorter than `MIN_SHARED_COLUMNS`, for arguments other than ids, a mask and a
    generation config, and for a config that brings its own cache, no cache, beams or several sequences a prompt.
    `counter`, if given, collects the (rows, columns) each prefill ran (for tests and benchmarks): the distinct rows'
    prefix, or the whole batch when nothing was shared.
    """
    import torch
    from transformers import DynamicCache

    original = model.generate
    llm = _causal_lm(model)

    def plain_sampling(config) -> bool:  # transformers 5 leaves a field it was not given at None: its default
        return (config is not None and getattr(config, "cache_implementation", None) is None
                and getattr(config, "use_cache", None) is not False and (getattr(config, "num_beams", None) or 1) == 1
                and (getattr(config, "num_return_sequences", None) or 1) == 1)

    def generate(input_ids=None, attention_mask=None, generation_config=None, **kwargs):
        shareable = not (input_ids is None or attention_mask is None or attention_mask.dim() != 2 or kwargs
                         or input_ids.size(1) <= MIN_SHARED_COLUMNS or not plain_sampling(generation_config)
                         or _unshareable(model))
        groups = _repeated_rows(input_ids, attention_mask, input_ids.size(1) - 1) if shareable else None
        if groups is None:
            if counter is not None and input_ids is not None:
                counter.append(tuple(input_ids.shape))
            return original(input_ids=input_ids, attention_mask=attention_mask, generation_config=generation_config,
                            **kwargs)
        first, inverse = groups
        prefix_mask = attention_mask[first, :-1]
        positions = (prefix_mask.long().cumsum(-1) - 1).masked_fill(prefix_mask == 0, 0)
        cache = DynamicCache(config=llm.config)
        with torch.no_grad():
            model(input_ids=input_ids[first, :-1], attention_mask=prefix_mask, position_ids=positions,
                  past_key_values=cache, use_cache=True, logits_to_keep=1)
        if counter is not None:
            counter.append(tuple(input_ids[first, :-1].shape))
        cache.batch_select_indices(inverse)
        return original(input_ids=input_ids, attention_mask=attention_mask, past_key_values=cache,
                        generation_config=generation_config)

    with _patched(model, "generate", generate):
        yield


# The method of each TRL trainer inside which its fused LM head runs (the policy's and the reference's forwards).
SCORING_METHODS = {"RLOOTrainer": "_get_per_token_logps_and_entropies", "GRPOTrainer": "_get_per_token_logps_and_entropies",
                   "DPOTrainer": "compute_loss"}
# The trainers whose scored rows come in groups of replies to one prompt (the prompt first, left-padded; the replies
# after it, `logits_to_keep` columns): their scoring method's arguments are (model, input_ids, attention_mask,
# logits_to_keep, ...).
GROUPED_REPLY_TRAINERS = ("RLOOTrainer", "GRPOTrainer")
# The trainers whose batches hold pairs of replies to one prompt: DPO's rows are [chosen..., rejected...], each its
# prompt and then its reply, right-padded; `compute_loss(model, inputs)` with `inputs["completion_mask"]`.
PAIRED_REPLY_TRAINERS = ("DPOTrainer",)


def _shared_prompt_width(trainer_name: str, args: tuple, kwargs: dict):
    """(model, prompt columns) of a scoring call whose rows can share their first columns, or (None, 0): for GRPO and
    RLOO the prompt's left-padded width; for DPO the columns before the first reply token of any row (every row's
    prompt is at least that long, and a pair's two rows start with the same prompt)."""
    if trainer_name in PAIRED_REPLY_TRAINERS:
        model, inputs = (list(args) + [None, None])[:2]
        model, inputs = kwargs.get("model", model), kwargs.get("inputs", inputs)
        completion = inputs.get("completion_mask") if isinstance(inputs, dict) else None
        if completion is None or not completion.any():
            return None, 0
        return model, int(completion.any(0).int().argmax())
    model, input_ids, _, logits_to_keep = (list(args) + [None] * 4)[:4]
    model, input_ids = kwargs.get("model", model), kwargs.get("input_ids", input_ids)
    logits_to_keep = kwargs.get("logits_to_keep", logits_to_keep)
    return model, input_ids.size(1) - logits_to_keep


def scoring_labelled_positions_only(trainer_cls, share_prompts: bool = False):
    """A subclass of a TRL trainer whose fused LM head scores the labelled (completion) tokens only
    (`labelled_positions_only`): the CPU preset's version of the trainer, same algorithm and values. The method
    wrapped is the trainer's in `SCORING_METHODS`. Tested with `RLOOTrainer` and `GRPOTrainer` (tests/test_rlhf.py)
    and `DPOTrainer` (tests/test_dpo.py): the same logged numbers, fewer rows through the LM head.
    `share_prompts` (GRPO, RLOO and DPO): each distinct prompt of a batch also goes through the model once, not once
    per reply: when GRPO's and RLOO's replies are sampled (`shared_prompt_generation`) and when any of the three
    scores them (`shared_prompt_backbone`; for DPO, the columns every row's prompt fills, shared by a pair's chosen
    and rejected rows)."""
    library = next((c.__name__ for c in trainer_cls.__mro__ if c.__name__ in SCORING_METHODS), None)
    if library is None:
        raise ValueError(f"{trainer_cls.__name__} is none of {sorted(SCORING_METHODS)}: the method its fused LM head "
                         "runs in is not known here.")
    name, grouped = SCORING_METHODS[library], library in GROUPED_REPLY_TRAINERS
    method = getattr(trainer_cls, name)

    def scoring(self, *args, **kwargs):
        with contextlib.ExitStack() as stack:
            stack.enter_context(labelled_positions_only())
            model, width = _shared_prompt_width(library, args, kwargs) if share_prompts else (None, 0)
            if model is not None:
                stack.enter_context(shared_prompt_backbone(model, width, getattr(self, "backbone_positions", None)))
            return method(self, *args, **kwargs)

    scoring.__name__ = name
    methods = {name: scoring}
    if share_prompts and grouped:
        def _generate_single_turn(self, *args, **kwargs):
            with shared_prompt_generation(self.accelerator.unwrap_model(self.model_wrapped),
                                          getattr(self, "prefill_positions", None)):
                return trainer_cls._generate_single_turn(self, *args, **kwargs)

        methods["_generate_single_turn"] = _generate_single_turn
    Trainer = type(f"{trainer_cls.__name__}LabelledOnly", (trainer_cls,), methods)
    Trainer.__qualname__ = Trainer.__name__
    return Trainer


def preset_trainer_class(trainer_cls, preset):
    """The TRL trainer a preset trains with: on a preset that scores labelled positions only (the CPU's),
    `scoring_labelled_positions_only(trainer_cls)`, which for GRPO, RLOO and DPO also runs each distinct prompt once
    when the preset shares prompts (`share_prompt_forward`); otherwise (the GPU presets) `trainer_cls` itself."""
    if not preset.lm_head_on_labels_only:  # the GPU presets: TRL's trainer (and its forwards) unchanged
        return trainer_cls
    return scoring_labelled_positions_only(trainer_cls, share_prompts=preset.share_prompt_forward)


class TrainingRecorder:
    """A trainer callback that records the loss at each logged step and the wall time of each step.

    It prints one progress line (`progress=True`) and writes the record the self-check shows
    (`save(folder)` -> `training.json`). Built lazily as a `transformers.TrainerCallback`.
    """

    def __new__(cls, progress: bool = True):
        from transformers import TrainerCallback

        class _Recorder(TrainerCallback):
            def __init__(self):
                self.losses: list[float] = []
                self.step_ends: list[float] = []
                self.progress = progress

            def on_train_begin(self, args, state, control, **kw):
                self.step_ends.append(time.perf_counter())

            def on_step_end(self, args, state, control, **kw):
                self.step_ends.append(time.perf_counter())

            def on_log(self, args, state, control, logs=None, **kw):
                if logs and "loss" in logs:
                    self.losses.append(float(logs["loss"]))
                    if self.progress:
                        print(f"\r  step {state.global_step:>3}/{state.max_steps}  loss {logs['loss']:.4f}", end="", flush=True)

            def on_train_end(self, args, state, control, **kw):
                if self.progress:
                    print()

            @property
            def step_seconds(self) -> list[float]:
                return [b - a for a, b in zip(self.step_ends, self.step_ends[1:])]

            def save(self, folder: str | Path) -> Path:
                return write_training_record(folder, len(self.step_seconds), self.losses, sum(self.step_seconds))

        return _Recorder()


def write_training_record(folder: str | Path, steps: int, losses: list[float], seconds: float, **extra) -> Path:
    """`training.json`, the record of a run the self-check shows: steps, losses, seconds, final loss."""
    import json

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    record = {"steps": steps, **extra, "final_loss": losses[-1] if losses else None, "losses": losses, "seconds": seconds}
    (folder / "training.json").write_text(json.dumps(record, indent=2, default=list))
    return folder / "training.json"


def refuse_outer_autocast(what: str = "training") -> None:
    """A clear error when a trainer is about to run inside an enabled autocast region. The trainer enters autocast
    itself at every step; inside an outer region torch keeps the half-precision copies of trainable weights it made
    at the first step until the outer region ends, so every forward pass runs the adapter as it was before the
    first update: the loss never moves, DPO's rewards stay 0, and the weights are changed blind."""
    import torch

    for device in ("cpu", "cuda"):
        try:
            enabled = torch.is_autocast_enabled(device)
        except (RuntimeError, TypeError):  # a torch without that device type
            continue
        if enabled:
            raise RuntimeError(f"{what} was started inside `with preset.autocast():` ({device}). The trainer applies the "
                               "preset's precision at every step itself; an outer autocast region keeps stale "
                               "half-precision copies of the weights being trained. Train outside it, and use "
                               "preset.autocast() around evaluation only.")


def train_pairs(trainer_class, model, tokenizer, dataset, peft_config, args, progress: bool = True, **trainer_kwargs):
    """A TRL preference trainer (`RewardTrainer`, `DPOTrainer`; `GRPOTrainer` with `reward_funcs` in
    `trainer_kwargs`) trained from seed `args.seed`, its per-step log dicts replaced by a `TrainingRecorder`.
    `peft_config` is copied first: PEFT fills in `modules_to_save` on the
    config it is given, and the caller's stays as built. Returns (trained model in eval mode, with no autocast
    wrapper; TrainResult, with no tokens counted; the trainer)."""
    import copy

    import torch
    from accelerate.utils import extract_model_from_parallel
    from transformers.trainer_callback import PrinterCallback

    refuse_outer_autocast(f"{trainer_class.__name__}.train()")
    torch.manual_seed(args.seed)  # the trainer draws LoRA's A matrices when it wraps the model
    recorder = TrainingRecorder(progress=progress)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    trainer = trainer_class(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                            peft_config=copy.deepcopy(peft_config), callbacks=[recorder], **trainer_kwargs)
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    trained = extract_model_from_parallel(trainer.model, keep_fp32_wrapper=False).eval()
    seconds = recorder.step_seconds
    return trained, TrainResult(losses=recorder.losses, steps=len(seconds), seconds=sum(seconds), real_tokens=0,
                                slot_tokens=0, step_seconds=seconds), trainer


def run_trainer(model, tokenizer, train_examples: Sequence[Example], peft_config, args, preset: Preset, layout: str,
                prompt_format: str = "chat", progress: bool = True, trainer_cls=None):
    """The course's training cell: seed, order the data for the layout, build the trainer, train.

    `model` is trained in place; returns (trained model, TrainResult). This is notebook 03's recipe cell.
    `trainer_cls` replaces the preset's trainer (`trainer_class`): notebook 09's distillation trainer.
    """
    import torch

    refuse_outer_autocast("the course's training cell")
    torch.manual_seed(args.seed)  # the trainer draws LoRA's A matrices when it wraps the model
    if layout == "grouped":
        train_examples = length_grouped_order(tokenizer, train_examples, args.per_device_train_batch_size, args.seed)
    dataset = to_prompt_completion(train_examples, prompt_format)
    recorder = TrainingRecorder(progress=progress)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    trainer = (trainer_cls or trainer_class(preset))(model=model, args=args, train_dataset=dataset,
                                                     processing_class=tokenizer, peft_config=peft_config,
                                                     callbacks=[recorder])
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # the recorder's progress line replaces its dict dumps
    counter = _CountingCollator(trainer.data_collator)
    trainer.data_collator = counter
    model.config.use_cache = False  # packed rows stay apart only without a KV cache
    trainer.train()
    from accelerate.utils import extract_model_from_parallel

    # accelerate wraps forward() in autocast for bf16/fp16 training; unwrap it so the returned model computes
    # in its own dtype and callers choose autocast explicitly (a saved-and-reloaded adapter has no wrapper)
    trained = extract_model_from_parallel(trainer.model, keep_fp32_wrapper=False)
    trained.eval()
    step_seconds = recorder.step_seconds
    result = TrainResult(losses=recorder.losses, steps=len(step_seconds), seconds=sum(step_seconds),
                         real_tokens=sum(counter.real[1:]), slot_tokens=sum(counter.slots[1:]),
                         step_seconds=step_seconds)
    return trained, result


def train_sft(model, tokenizer, train_examples: Sequence[Example], setup: SFTSetup, preset: Preset,
              output_dir: str | Path, progress: bool = True):
    """Fine-tune `model` in place with SFTTrainer (+ LoRA when setup.method == 'lora'), from an `SFTSetup`.

    Returns (trained model, TrainResult). With LoRA the returned model is a PeftModel.
    """
    setup.validate()
    return run_trainer(model, tokenizer, train_examples, lora_config(setup) if setup.method == "lora" else None,
                       sft_config(setup, preset, output_dir), preset, setup.layout, setup.prompt_format, progress)


def train_recipe(model, tokenizer, train_examples: Sequence[Example], lora, sft, preset: Preset,
                 layout: str = "grouped", progress: bool = True):
    """The packaged mirror of notebook 03's recipe: a LoraConfig and an SFTConfig, trained with SFTTrainer."""
    return run_trainer(model, tokenizer, train_examples, lora, sft, preset, layout, "chat", progress)


def save_recipe_artifacts(model, tokenizer, result: TrainResult, artifacts: str | Path, **record) -> Path:
    """Save what a recipe trained: the adapter (with tokenizer) and the record of the run (plus `record`)."""
    adapter = Path(artifacts) / "adapter"
    adapter.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(adapter)
    tokenizer.save_pretrained(adapter)
    write_training_record(artifacts, result.steps, result.losses, result.seconds, **record)
    return adapter


def save_sft_artifacts(model, tokenizer, result: TrainResult, setup: SFTSetup, artifacts: str | Path) -> Path:
    """Save what the grader evaluates: the adapter (with tokenizer) and a record of the training run."""
    if setup.method != "lora":
        raise ValueError("The graded exercise saves a LoRA adapter; set SFTSetup.method = 'lora'.")
    return save_recipe_artifacts(model, tokenizer, result, artifacts, setup=dataclasses.asdict(setup))


def length_grouped_order(tokenizer, examples: Sequence[Example], batch_size: int, seed: int) -> list[Example]:
    """Examples reordered so each batch holds similar lengths; the order of the batches is shuffled.

    Sorting by length and cutting into batches removes most padding; shuffling whole batches keeps the
    optimizer from seeing all the short examples first.
    """
    import random

    lengths = chat_lengths(tokenizer, examples)
    by_length = sorted(range(len(examples)), key=lambda i: (lengths[i], i))
    batches = [by_length[i:i + batch_size] for i in range(0, len(by_length), batch_size)]
    random.Random(seed).shuffle(batches)
    return [examples[i] for batch in batches for i in batch]


def chat_lengths(tokenizer, examples: Sequence[Example]) -> list[int]:
    """Token count of each example rendered with the chat template (prompt + answer)."""
    return [len(tokenizer.apply_chat_template(e.messages(), tokenize=True)["input_ids"]) for e in examples]


def layout_run_setup(tokenizer, examples: Sequence[Example], setup: SFTSetup, layout: str) -> SFTSetup:
    """`setup` for one epoch in `layout`; packed rows hold `batch_size` examples' worth of tokens."""
    mean_len = sum(chat_lengths(tokenizer, examples)) / len(examples)
    return dataclasses.replace(setup, layout=layout, num_epochs=1, pack_length=int(round(setup.batch_size * mean_len)))


def compare_layouts(tokenizer, examples: Sequence[Example], preset: Preset, setup: SFTSetup,
                    model_name: str = "embedded", output_dir: str | Path = "build/layouts") -> list[dict]:
    """Train the same LoRA fine-tune three ways (padded, length-grouped, packed) for one epoch each.

    Each run starts from a fresh copy of the base model and sees the same examples. Packed rows hold
    `batch_size` examples' worth of tokens, so a step does the same real work in every layout. The rows' common
    prefix is not shared (`share_prompt_forward` off): a packed row cannot share it, so sharing would add a second
    difference between the layouts to the one measured, their padding.
    Returns one row per layout: real tokens/s, padding fraction, the bound 1/(1 - padding) and losses.
    """
    from .models import load_model

    preset = dataclasses.replace(preset, share_prompt_forward=False)
    rows = []
    for layout in LAYOUTS:
        run = layout_run_setup(tokenizer, examples, setup, layout)
        print(f"layout={layout}")
        _, result = train_sft(load_model(model_name, preset.device, seed=setup.seed), tokenizer, examples, run,
                              preset, Path(output_dir) / layout)
        rows.append({"layout": layout, "steps": result.steps, "real_tokens_per_s": result.real_tokens_per_s,
                     "padding_fraction": result.padding_fraction,
                     "seconds_per_step": sum(result.step_seconds[1:]) / max(len(result.step_seconds) - 1, 1),
                     "losses": result.losses})
    padded = rows[0]
    for row in rows:
        row["speedup_vs_padded"] = row["real_tokens_per_s"] / padded["real_tokens_per_s"]
        row["bound_vs_padded"] = 1 / (1 - padded["padding_fraction"]) if row["layout"] != "padded" else 1.0
    return rows


def recommend_layout(rows: list[dict]) -> str:
    """The layout with the most real tokens per second in this run."""
    return max(rows, key=lambda r: r["real_tokens_per_s"])["layout"]


def packed_vs_separate_loss(model, tokenizer, examples: Sequence[Example], reset_positions: bool = True) -> tuple[float, float]:
    """Mean token loss of `examples` packed into one row vs each in its own row.

    The packed row restarts `position_ids` at every example and passes no attention mask, which is how
    transformers recognises packed sequences and keeps them from attending to each other (KV cache off).
    With `reset_positions=False` the row is one long causal sequence: examples see their predecessors.
    """
    import torch

    seqs = [torch.tensor(tokenizer.apply_chat_template(e.messages(), tokenize=True)["input_ids"]) for e in examples]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        total, count = 0.0, 0
        for ids in seqs:
            out = model(input_ids=ids[None], labels=ids[None], use_cache=False)
            total += out.loss.item() * (len(ids) - 1)
            count += len(ids) - 1
        separate = total / count
        row = torch.cat(seqs)[None]
        labels = row.clone()
        start = 0
        for ids in seqs[:-1]:  # the first token of the next example is not predicted from this one
            start += len(ids)
            labels[0, start] = -100
        if reset_positions:
            positions = torch.cat([torch.arange(len(ids)) for ids in seqs])[None]
        else:
            positions = torch.arange(row.shape[1])[None]
        packed = model(input_ids=row, position_ids=positions, labels=labels, use_cache=False).loss.item()
    model.train(was_training)
    return packed, separate
