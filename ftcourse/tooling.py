"""The course's recipe (a PEFT `LoraConfig` and a TRL `SFTConfig`) written for Axolotl and for Unsloth.

Notebook 02 prints both next to TRL. Neither tool runs on this course's machines (said in the notebook:
Axolotl's current release needs Python >= 3.12, Unsloth needs a GPU), so these functions only *write*
the equivalent configuration; `tests/test_tooling.py` checks that every value the course chose is carried
over, and each function refuses a setting it cannot express rather than dropping it silently.
"""

from __future__ import annotations

import dataclasses

import yaml

# The SFTConfig fields each translation carries; anything else that differs from TRL's default is refused.
_CARRIED = ("max_steps", "num_train_epochs", "per_device_train_batch_size", "gradient_accumulation_steps",
            "learning_rate", "lr_scheduler_type", "warmup_steps", "weight_decay", "seed", "max_length",
            "packing", "bf16", "fp16", "gradient_checkpointing", "activation_checkpointing", "optim", "output_dir")


def _scheduler(sft) -> str:
    return getattr(sft.lr_scheduler_type, "value", str(sft.lr_scheduler_type))


def _optimizer(sft) -> str:
    return getattr(sft.optim, "value", str(sft.optim))


def _checkpointing(sft) -> bool:
    """Activation (gradient) checkpointing; transformers 5 renamed the field."""
    return bool(getattr(sft, "activation_checkpointing", None) or getattr(sft, "gradient_checkpointing", False))


def _check_lora(lora) -> list[str]:
    """The target modules as a list; refuse what neither translation expresses."""
    if lora is None:
        raise ValueError("the translations write a LoRA recipe: pass the LoraConfig you train with.")
    targets = lora.target_modules
    if isinstance(targets, str):
        raise ValueError(f"target_modules={targets!r} is a pattern; name the modules as a list to translate it.")
    if getattr(lora, "use_dora", False) or getattr(lora, "bias", "none") != "none":
        raise ValueError("DoRA and trained biases are not part of the course's recipe; translate them by hand.")
    return sorted(targets)


def not_carried(sft) -> dict:
    """The SFTConfig fields set away from TRL's defaults that neither translation carries (logging, the
    device, the sampling order): each tool sets those its own way."""
    from trl import SFTConfig

    default = SFTConfig(output_dir=sft.output_dir, bf16=sft.bf16, fp16=sft.fp16, use_cpu=sft.use_cpu)
    names = sorted(field.name for field in dataclasses.fields(default))
    return {name: getattr(sft, name) for name in names
            if name not in _CARRIED and getattr(sft, name, None) != getattr(default, name, None)}


def axolotl_config(lora, sft, base_model: str, data_path: str) -> dict:
    """Axolotl's YAML keys for the same fine-tune: a chat-format JSONL, loss on the assistant turns only."""
    targets = _check_lora(lora)
    config = {
        "base_model": base_model,
        "datasets": [{"path": data_path, "type": "chat_template", "field_messages": "messages",
                      "roles_to_train": ["assistant"]}],
        "chat_template": "tokenizer_default",
        "train_on_inputs": False,  # completion-only loss, as TRL's prompt/completion data gives
        "sequence_len": sft.max_length,
        "sample_packing": bool(sft.packing),
        "adapter": "lora",
        "lora_r": lora.r,
        "lora_alpha": lora.lora_alpha,
        "lora_dropout": lora.lora_dropout,
        "lora_target_modules": targets,
        "peft_use_rslora": bool(lora.use_rslora),
        "micro_batch_size": sft.per_device_train_batch_size,
        "gradient_accumulation_steps": sft.gradient_accumulation_steps,
        "learning_rate": sft.learning_rate,
        "lr_scheduler": _scheduler(sft),
        "warmup_steps": sft.warmup_steps,
        "weight_decay": sft.weight_decay,
        "optimizer": _optimizer(sft),
        "gradient_checkpointing": _checkpointing(sft),
        "bf16": bool(sft.bf16),
        "fp16": bool(sft.fp16),
        "seed": sft.seed,
        "output_dir": sft.output_dir,
    }
    if sft.max_steps and sft.max_steps > 0:
        config["max_steps"] = sft.max_steps
    else:
        config["num_epochs"] = sft.num_train_epochs
    return config


def axolotl_yaml(lora, sft, base_model: str, data_path: str) -> str:
    """`axolotl_config` as the YAML file `axolotl train config.yml` reads."""
    return yaml.safe_dump(axolotl_config(lora, sft, base_model, data_path), sort_keys=False)


def unsloth_script(lora, sft, base_model: str, data_path: str) -> str:
    """The same fine-tune as an Unsloth script: Unsloth loads and patches the model, TRL still trains it."""
    targets = _check_lora(lora)
    length = "max_steps" if sft.max_steps and sft.max_steps > 0 else "num_train_epochs"
    length_value = sft.max_steps if length == "max_steps" else sft.num_train_epochs
    return f'''from unsloth import FastLanguageModel  # first: it patches transformers and TRL on import
from datasets import load_dataset
from trl import SFTConfig, SFTTrainer

model, tokenizer = FastLanguageModel.from_pretrained(
    model_name={base_model!r}, max_seq_length={sft.max_length}, load_in_4bit=False,
    dtype=None)  # None: bfloat16 or float16 on a GPU, whatever SFTConfig says; the course trained in float32
model = FastLanguageModel.get_peft_model(
    model, r={lora.r}, lora_alpha={lora.lora_alpha}, lora_dropout={lora.lora_dropout},
    target_modules={targets!r}, use_rslora={bool(lora.use_rslora)},
    use_gradient_checkpointing={"'unsloth'" if _checkpointing(sft) else False}, random_state={sft.seed})
data = load_dataset("json", data_files={data_path!r}, split="train")
# rows {{"prompt": [the user turn], "completion": [the assistant turn]}}: TRL puts the loss on the completion only
trainer = SFTTrainer(model=model, processing_class=tokenizer, train_dataset=data, args=SFTConfig(
    output_dir={sft.output_dir!r}, {length}={length_value}, per_device_train_batch_size={sft.per_device_train_batch_size},
    gradient_accumulation_steps={sft.gradient_accumulation_steps}, learning_rate={sft.learning_rate},
    lr_scheduler_type={_scheduler(sft)!r}, warmup_steps={sft.warmup_steps}, weight_decay={sft.weight_decay},
    optim={_optimizer(sft)!r}, max_length={sft.max_length}, packing={bool(sft.packing)}, seed={sft.seed},
    bf16={bool(sft.bf16)}, fp16={bool(sft.fp16)}, report_to="none"))
trainer.train()
'''
