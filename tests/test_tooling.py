"""The course's recipe written for Axolotl and Unsloth carries every value the course chose."""

import ast

import pytest
import yaml
from peft import LoraConfig

from ftcourse import tooling
from ftcourse.presets import get_preset
from ftcourse.training import SFTSetup, lora_config, sft_config


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    setup = SFTSetup(method="lora", max_steps=13, learning_rate=1.5e-3, batch_size=4, lora_r=12, lora_alpha=7,
                     lora_dropout=0.05, lr_scheduler_type="linear", warmup_steps=3, weight_decay=0.01, seed=5)
    return lora_config(setup), sft_config(setup, get_preset("cpu"), tmp_path_factory.mktemp("out"))


def test_axolotl_carries_every_choice(recipe):
    lora, sft = recipe
    config = yaml.safe_load(tooling.axolotl_yaml(lora, sft, "org/model", "data.jsonl"))
    assert (config["lora_r"], config["lora_alpha"], config["lora_dropout"]) == (12, 7, 0.05)
    assert config["lora_target_modules"] == sorted(lora.target_modules)
    assert (config["micro_batch_size"], config["max_steps"], config["learning_rate"]) == (4, 13, 1.5e-3)
    assert (config["lr_scheduler"], config["warmup_steps"], config["weight_decay"], config["seed"]) == ("linear", 3, 0.01, 5)
    assert config["sequence_len"] == sft.max_length and config["train_on_inputs"] is False
    assert config["datasets"][0]["roles_to_train"] == ["assistant"]


def test_unsloth_script_is_python_with_the_same_values(recipe):
    lora, sft = recipe
    script = tooling.unsloth_script(lora, sft, "org/model", "data.jsonl")
    tree = ast.parse(script)
    calls = {node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id: node
             for node in ast.walk(tree) if isinstance(node, ast.Call)}
    peft_kwargs = {k.arg: ast.literal_eval(k.value) for k in calls["get_peft_model"].keywords}
    assert (peft_kwargs["r"], peft_kwargs["lora_alpha"], peft_kwargs["random_state"]) == (12, 7, 5)
    sft_kwargs = {k.arg: ast.literal_eval(k.value) for k in calls["SFTConfig"].keywords}
    assert (sft_kwargs["max_steps"], sft_kwargs["learning_rate"], sft_kwargs["per_device_train_batch_size"]) == (13, 1.5e-3, 4)
    assert sft_kwargs["lr_scheduler_type"] == "linear" and sft_kwargs["max_length"] == sft.max_length


def test_what_is_not_carried_is_named(recipe):
    _, sft = recipe
    left = tooling.not_carried(sft)
    assert "logging_steps" in left and "learning_rate" not in left and "max_steps" not in left


def test_a_setting_the_translation_cannot_express_is_refused(recipe):
    _, sft = recipe
    with pytest.raises(ValueError, match="pattern"):
        tooling.axolotl_config(LoraConfig(r=4, target_modules="all-linear"), sft, "m", "d")
    with pytest.raises(ValueError, match="DoRA"):
        tooling.unsloth_script(LoraConfig(r=4, target_modules=["q_proj"], use_dora=True), sft, "m", "d")
