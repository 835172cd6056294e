import dataclasses

import pytest
from conftest import keep_first_layers

from ftcourse.presets import get_preset
from ftcourse.tasks import make_date_examples
from ftcourse.training import (SFTSetup, chat_lengths, length_grouped_order, packed_vs_separate_loss,
                               recommend_layout, train_sft)


def test_packing_keeps_examples_apart(model_and_tokenizer):
    """Packed loss equals the separate losses; without restarting positions it does not (the test can fail)."""
    model, tokenizer = model_and_tokenizer
    examples = make_date_examples(3, 11)
    packed, separate = packed_vs_separate_loss(model, tokenizer, examples)
    assert packed == pytest.approx(separate, rel=1e-4)
    leaky, separate = packed_vs_separate_loss(model, tokenizer, examples, reset_positions=False)
    assert abs(leaky - separate) > 1e-2


def test_length_grouping_removes_most_padding(tokenizer):
    examples = make_date_examples(64, 5)
    lengths = dict(zip((e.prompt for e in examples), chat_lengths(tokenizer, examples)))

    def padding(order):
        slots = real = 0
        for i in range(0, len(order), 8):
            batch = [lengths[e.prompt] for e in order[i:i + 8]]
            slots += max(batch) * len(batch)
            real += sum(batch)
        return 1 - real / slots

    grouped = length_grouped_order(tokenizer, examples, 8, seed=0)
    assert sorted(e.prompt for e in grouped) == sorted(e.prompt for e in examples)
    assert padding(grouped) < 0.05 < padding(examples)
    assert grouped == length_grouped_order(tokenizer, examples, 8, seed=0)


def test_setup_validation_names_the_problem():
    with pytest.raises(ValueError, match="method must be 'lora' or 'full'"):
        SFTSetup(method="qlora").validate()
    with pytest.raises(ValueError, match="over this exercise's step budget of 24"):
        SFTSetup(max_steps=30).validate(step_budget=24)
    with pytest.raises(ValueError, match="layout must be one of"):
        SFTSetup(layout="sorted").validate()


def test_recommend_layout_picks_the_fastest():
    rows = [{"layout": "padded", "real_tokens_per_s": 100.0}, {"layout": "grouped", "real_tokens_per_s": 130.0},
            {"layout": "packed", "real_tokens_per_s": 90.0}]
    assert recommend_layout(rows) == "grouped"


def test_a_short_lora_run_lowers_the_loss_and_counts_tokens(tmp_path):
    from ftcourse.models import load_model_and_tokenizer

    preset = get_preset("cpu")
    model, tokenizer = load_model_and_tokenizer()
    setup = SFTSetup(max_steps=6, learning_rate=1e-3, batch_size=4, layout="grouped")
    tuned, result = train_sft(model, tokenizer, make_date_examples(48, 2), setup, preset, tmp_path, progress=False)
    assert result.steps == 6 and len(result.losses) == 6
    # single batches are noisy: compare the last two steps with the first two
    assert sum(result.losses[-2:]) < 0.7 * sum(result.losses[:2]), result.losses
    assert 0 <= result.padding_fraction < 0.1 and result.real_tokens > 0
    assert sum(p.numel() for p in tuned.parameters() if p.requires_grad) < 0.1 * sum(p.numel() for p in tuned.parameters())


def test_plain_prompt_format_dataset():
    from ftcourse.tasks import Example
    from ftcourse.training import to_prompt_completion

    plain = to_prompt_completion([Example("Q?", "A")], "plain")[0]
    assert plain == {"prompt": "Question: Q?\nAnswer:", "completion": " A"}
    chat = to_prompt_completion([Example("Q?", "A")])[0]
    assert chat["prompt"] == [{"role": "user", "content": "Q?"}]
    with pytest.raises(ValueError, match="prompt_format must be 'chat' or 'plain'"):
        to_prompt_completion([Example("Q?", "A")], "alpaca")


def test_common_prefix_width_counts_the_columns_every_row_shares():
    import torch

    from ftcourse.training import common_prefix_width

    ids = torch.tensor([[1, 2, 3, 4, 9], [1, 2, 3, 5, 0], [1, 2, 3, 4, 0]])
    assert common_prefix_width(ids) == 3
    assert common_prefix_width(ids, torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 1, 0]])) == 2  # masked
    assert common_prefix_width(ids[:1]) == 0 and common_prefix_width(ids[[0, 0]]) == 5  # one row; identical rows
    assert common_prefix_width(torch.tensor([[7, 1], [8, 1]])) == 0


@pytest.mark.parametrize("bf16", [False, True])
def test_the_completion_only_loss_equals_trls(tmp_path, bf16):
    """The CPU preset's trainer computes SFTTrainer's loss (mean NLL of the completion tokens) and its gradients,
    with the LM head on the labeled positions only, in float32 and under bf16 autocast; and so does it in float32
    when the columns every row starts with go through the backbone once (`share_prefix`, the CPU preset's choice
    there)."""
    import torch
    from trl import SFTTrainer

    from ftcourse.models import load_model_and_tokenizer
    from ftcourse.training import completion_only_trainer, lora_config, sft_config, to_prompt_completion

    preset = dataclasses.replace(get_preset("cpu"), bf16=bf16)  # bf16 autocast runs on any CPU, fast or not
    setup = SFTSetup(max_steps=1, batch_size=6)
    dataset = to_prompt_completion(make_date_examples(6, 3))
    results = {}
    positions: list[tuple] = []  # the shared-prefix trainer's backbone calls: (rows, columns)
    shared = type("Counting", (completion_only_trainer(share_prefix=True),), {"backbone_positions": positions})
    # the shared prefix is compared in float32 only: under bf16 autocast the shorter prefix pass rounds differently
    # (0.3 % of the hidden states on a CPU that emulates bf16), beyond these tolerances
    trainers = [("trl", SFTTrainer), ("completion_only", completion_only_trainer())] + [("shared_prefix", shared)] * (not bf16)
    for name, cls in trainers:
        model, tokenizer = load_model_and_tokenizer()
        if bf16:  # a CPU without AVX512-BF16 emulates bf16 matmuls (~12x slower): the first 6 of 30 layers suffice
            keep_first_layers(model, 6)  # to compare two loss computations, which only differ at the LM head
        torch.manual_seed(0)
        trainer = cls(model=model, args=sft_config(setup, preset, tmp_path / name), train_dataset=dataset,
                      processing_class=tokenizer, peft_config=lora_config(setup))
        batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(6)]))
        trainer.model.train()
        with trainer.compute_loss_context_manager(), trainer.accelerator.autocast():  # as in train(): bf16 when set
            loss = trainer.compute_loss(trainer.model, batch, num_items_in_batch=(batch["labels"][:, 1:] != -100).sum())
        loss.backward()
        grads = [p.grad.clone() for p in trainer.model.parameters() if p.requires_grad and p.grad is not None]
        results[name] = (loss.item(), grads)
    loss_a, grads_a = results["trl"]
    scale = max(float(g.abs().max()) for g in grads_a)
    for name in results.keys() - {"trl"}:
        loss_b, grads_b = results[name]
        assert loss_b == pytest.approx(loss_a, rel=1e-4), name
        assert len(grads_a) == len(grads_b) > 0
        # bf16 keeps 8 bits of mantissa: gradients summed in another order agree to two of its units (2**-7 of their
        # scale; measured 5e-3 on all 30 layers, the 6 kept here add less noise); in float32 far closer
        assert max(float((a - b).abs().max()) for a, b in zip(grads_a, grads_b)) <= (2**-7 if bf16 else 1e-3) * scale, name
    if not bf16:  # the shared-prefix trainer ran the chat template's system turn and the instruction once, then the rest
        (rows, prefix), (all_rows, rest) = positions
        assert rows == 1 and all_rows == 6 and prefix >= 20 and rest > 0, positions


# ---------------------------------------------------------------- a learner's LoraConfig and SFTConfig (notebook 03)

def _recipe(preset, **sft):
    from peft import LoraConfig
    from trl import SFTConfig

    from ftcourse.training import preset_sft_args

    lora = LoraConfig(r=16, lora_alpha=32, task_type="CAUSAL_LM", target_modules=["q_proj", "v_proj"])
    args = dict(max_steps=12, learning_rate=2e-3, per_device_train_batch_size=8, lr_scheduler_type="cosine",
                warmup_steps=2, seed=0) | sft
    return lora, SFTConfig(output_dir="elsewhere", **args, **preset_sft_args(preset, "grouped"))


def test_recipe_choices_read_the_learners_configs_and_the_grader_rebuilds_the_same_configs(tmp_path):
    from ftcourse.training import config_dict, recipe_choices, recipe_configs

    preset = get_preset("cpu")
    lora, sft = _recipe(preset)
    lora_choices, sft_choices = recipe_choices(lora, sft, preset, "grouped")
    assert lora_choices == {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj"],
                            "use_rslora": False}
    assert sft_choices["max_steps"] == 12 and sft_choices["lr_scheduler_type"] == "cosine"
    # the same from plain data (what crosses back from the learner's child)
    assert recipe_choices(config_dict(lora, "lora_config"), config_dict(sft, "sft_config"), preset) == (lora_choices, sft_choices)
    # the grader's configs equal the learner's in every field but where files go: it trains what the learner trained
    lora2, sft2 = recipe_configs(lora_choices, sft_choices, preset, "grouped", tmp_path)
    for mine, theirs in ((config_dict(lora, "l"), config_dict(lora2, "l")), (config_dict(sft, "s"), config_dict(sft2, "s"))):
        differ = {k for k in mine if mine[k] != theirs.get(k)}
        assert differ <= {"output_dir", "logging_dir", "run_name"}, differ


@pytest.mark.parametrize("change, message", [
    (dict(max_steps=36), "max_steps must be at most 24"),
    (dict(max_steps=-1, num_train_epochs=2), "counts optimizer steps"),
    (dict(gradient_accumulation_steps=8), "sft_config.gradient_accumulation_steps = 8: this exercise keeps it at 1"),
    (dict(optim="sgd"), "sft_config.optim = 'sgd'"),
    (dict(per_device_train_batch_size=64), "per_device_train_batch_size must be an integer between 1 and 32"),
    (dict(learning_rate=0.0), "learning_rate must be a number in (0, 1]"),
    (dict(lr_scheduler_type="polynomial"), "lr_scheduler_type must be one of"),
])
def test_recipe_choices_refuse_what_the_grader_would_not_train_and_name_the_field(change, message):
    from ftcourse.training import RecipeError, recipe_choices

    preset = get_preset("cpu")
    lora, sft = _recipe(preset, **change)
    with pytest.raises(RecipeError) as error:
        recipe_choices(lora, sft, preset, "grouped")
    assert message in str(error.value)


def test_recipe_choices_refuse_a_missing_or_odd_lora_config():
    from peft import LoraConfig

    from ftcourse.training import RecipeError, recipe_choices

    preset = get_preset("cpu")
    _, sft = _recipe(preset)
    for lora, message in ((None, "must be a LoraConfig, got None"), ("r=16", "must be a LoraConfig, got str"),
                          (LoraConfig(r=16, target_modules=["q_proj"], task_type="SEQ_CLS"), "task_type must be 'CAUSAL_LM'"),
                          (LoraConfig(r=16, target_modules=["lm_head"], task_type="CAUSAL_LM"), "target_modules must be"),
                          (LoraConfig(r=16, target_modules=["q_proj"], use_dora=True, task_type="CAUSAL_LM"), "use_dora")):
        with pytest.raises(RecipeError, match=message.replace("(", r"\(")):
            recipe_choices(lora, sft, preset)


def test_recipe_choices_store_checked_integers_and_refuse_changed_machine_arguments():
    """Data from the learner's child: 8.0 trains as 8; a machine argument changed from preset_sft_args is refused."""
    from trl import SFTConfig

    from ftcourse.training import RecipeError, config_dict, preset_sft_args, recipe_choices

    preset = get_preset("cpu")
    lora, sft = _recipe(preset)
    lora_data, sft_data = config_dict(lora, "lora_config"), config_dict(sft, "sft_config")
    lora_choices, sft_choices = recipe_choices(lora_data | {"r": 16.0}, sft_data | {"max_steps": 12.0, "seed": 3.0,
                                               "per_device_train_batch_size": 8.0}, preset)
    assert [type(v) for v in (lora_choices["r"], sft_choices["max_steps"], sft_choices["seed"],
                              sft_choices["per_device_train_batch_size"])] == [int] * 4
    for field, value in (("max_length", 4096), ("train_sampling_strategy", "random"), ("activation_checkpointing", True),
                         ("logging_steps", 1000)):
        assert value != preset_sft_args(preset, "grouped")[field]
        with pytest.raises(RecipeError, match=f"sft_config.{field} = "):
            recipe_choices(lora_data, sft_data | {field: value}, preset)
    # checkpointing under its deprecated name is the same field: still refused, whichever name is reported
    on = config_dict(SFTConfig(output_dir="x", **(preset_sft_args(preset) | {"activation_checkpointing": None}),
                               gradient_checkpointing=True), "sft_config")
    with pytest.raises(RecipeError, match=r"sft_config\.(gradient|activation)_checkpointing = True"):
        recipe_choices(lora_data, sft_data | {k: on[k] for k in ("gradient_checkpointing", "activation_checkpointing")},
                       preset)


def test_preset_args_build_an_sft_config_without_deprecation_warnings():
    """preset_sft_args says checkpointing under its transformers 5 name (test_reward checks the RewardConfig)."""
    import warnings

    from trl import SFTConfig

    from ftcourse.training import preset_sft_args

    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        sft = SFTConfig(output_dir="x", **preset_sft_args(get_preset("cpu")))
    assert not (sft.activation_checkpointing or sft.gradient_checkpointing)


def test_every_training_record_has_the_fields_the_self_check_reads(tmp_path):
    """training.json from the recorder (notebook 03), the recipe mirror and the SFTSetup path: one writer."""
    import json

    from ftcourse.grading.artifacts import recorded_steps
    from ftcourse.training import TrainingRecorder, TrainResult, save_recipe_artifacts, save_sft_artifacts

    class Saves:
        def save_pretrained(self, folder):
            (folder / "saved").write_text("x")

    result = TrainResult(losses=[0.7, 0.2], steps=2, seconds=3.0, real_tokens=1, slot_tokens=1, step_seconds=[1.0, 2.0])
    recorder = TrainingRecorder(progress=False)
    recorder.losses, recorder.step_ends = [0.7, 0.2], [0.0, 1.0, 3.0]
    recorder.save(tmp_path / "kernel")
    save_recipe_artifacts(Saves(), Saves(), result, tmp_path / "recipe")
    save_sft_artifacts(Saves(), Saves(), result, SFTSetup(max_steps=2), tmp_path / "sft")
    for folder in ("kernel", "recipe", "sft"):
        record = json.loads((tmp_path / folder / "training.json").read_text())
        assert {k: record[k] for k in ("steps", "losses", "final_loss", "seconds")} == \
            {"steps": 2, "losses": [0.7, 0.2], "final_loss": 0.2, "seconds": 3.0}, folder
        assert recorded_steps(tmp_path / folder) == 2
    assert json.loads((tmp_path / "sft" / "training.json").read_text())["setup"]["max_steps"] == 2
    assert (tmp_path / "sft" / "adapter" / "saved").is_file()
    with pytest.raises(ValueError, match="saves a LoRA adapter"):
        save_sft_artifacts(Saves(), Saves(), result, SFTSetup(method="full"), tmp_path / "full")


# ---------------------------------------------------------------- a learner's BitsAndBytesConfig (notebook 05)

def test_the_qlora_base_is_a_4bit_nf4_config_and_double_quantization_is_the_one_choice():
    """Exercise 5.2's BitsAndBytesConfig: 4-bit NF4 required, double quantization chosen, the compute dtype the
    machine's; any other change is refused by field name, as is an object of another type."""
    import json

    from transformers import BitsAndBytesConfig

    from ftcourse.grading.child import export
    from ftcourse.training import RecipeError, checked_recipe, qlora_base_choices

    preset = get_preset("cpu")
    nf4 = dict(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=preset.compute_dtype)
    for double_quant in (True, False):
        config = BitsAndBytesConfig(**nf4, bnb_4bit_use_double_quant=double_quant)
        assert qlora_base_choices(config) == {"double_quant": double_quant}
        as_data = json.loads(json.dumps(export(config, "bnb_config")))  # what a child sends back
        assert qlora_base_choices(as_data) == {"double_quant": double_quant}
    assert qlora_base_choices(BitsAndBytesConfig(**(nf4 | {"bnb_4bit_compute_dtype": "bfloat16"}))) == {"double_quant": False}
    refused = {"load_in_4bit": BitsAndBytesConfig(load_in_8bit=True),
               "bnb_4bit_quant_type": BitsAndBytesConfig(**(nf4 | {"bnb_4bit_quant_type": "fp4"})),
               "llm_int8_skip_modules": BitsAndBytesConfig(**nf4, llm_int8_skip_modules=["q_proj"]),
               "bnb_4bit_quant_storage": BitsAndBytesConfig(**nf4, bnb_4bit_quant_storage="bfloat16")}
    for field, config in refused.items():
        with pytest.raises(RecipeError, match=f"bnb_config.{field}"):
            qlora_base_choices(config)
    with pytest.raises(RecipeError, match="must be a BitsAndBytesConfig"):
        qlora_base_choices(object())
    lora, sft = _recipe(preset, max_steps=preset.qlora_step_budget + 1)  # the QLoRA budget is the exercise's
    with pytest.raises(RecipeError, match=f"at most {preset.qlora_step_budget}"):
        checked_recipe({"bnb_config": BitsAndBytesConfig(**nf4), "lora_config": lora, "sft_config": sft}, preset,
                       preset.qlora_step_budget)


def test_a_recipe_error_quoting_a_huge_value_stays_short():
    from ftcourse.training import RecipeError

    assert len(str(RecipeError("sft_config.lr_scheduler_kwargs = " + repr({"x": "A" * 10**6})))) <= 606
    assert str(RecipeError("short")) == "short"
