"""The memory estimator against byte-counted training steps, on the course model and on another shape."""

import dataclasses
import json

import pytest
import torch
from conftest import keep_first_layers

from ftcourse.estimator import (METHODS, ModelShape, TrainingPlan, build_model_for_plan, estimate_memory,
                                known_shape, load_plan, lora_param_count, measure_training_memory, prepare_for_plan,
                                save_plan, training_flops)
from ftcourse.models import load_quantized_model

TOLERANCE = 0.15  # the bound; the estimator is usually within 2 %


def _relative_error(shape, plan, measured):
    return abs(estimate_memory(shape, plan).total - measured.total) / measured.total


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("autocast", [None, "bfloat16"])
def test_estimate_matches_counted_bytes_on_the_course_model(method, autocast):
    """The course model at its real widths: all 30 layers in float32; under bf16 autocast, which most CPUs emulate
    (~12x slower), its first 6 (the estimate is a sum over layers, each layer counted the same way)."""
    plan = TrainingPlan(method=method, batch_size=2, seq_len=48, autocast_dtype=autocast, lora_r=8)
    model, shape = build_model_for_plan(plan), known_shape("smollm2-135m")
    if autocast:
        keep_first_layers(model, 6)
        shape = dataclasses.replace(shape, n_layers=6)
    measured = measure_training_memory(model, plan)
    assert _relative_error(shape, plan, measured) <= TOLERANCE
    estimate = estimate_memory(shape, plan)
    # the static parts are exact: they follow from parameter counts
    assert estimate.parameters == pytest.approx(measured.parameters, rel=1e-3)
    assert estimate.gradients == measured.gradients
    assert estimate.optimizer_states == measured.optimizer_states


def _tiny_llama(tmp_path=None):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=128, intermediate_size=352, num_hidden_layers=3, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=1000, tie_word_embeddings=False, max_position_embeddings=256)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    if tmp_path is not None:
        model.save_pretrained(tmp_path)
    return model, ModelShape.from_config(config, name="tiny")


@pytest.mark.parametrize("method,autocast,attention_mask", [
    ("full", None, True), ("lora", None, False), ("full", "bfloat16", False), ("lora", "bfloat16", True)])
def test_estimate_generalises_to_another_architecture(method, autocast, attention_mask):
    """Untied embeddings, other width ratios and head counts: the per-layer list still holds."""
    model, shape = _tiny_llama()
    plan = TrainingPlan(method=method, batch_size=3, seq_len=40, autocast_dtype=autocast, lora_r=4,
                        lora_targets=("q_proj", "v_proj", "down_proj"), attention_mask=attention_mask)
    assert shape.n_params == sum(p.numel() for p in model.parameters())
    measured = measure_training_memory(prepare_for_plan(model, plan), plan)
    assert _relative_error(shape, plan, measured) <= TOLERANCE


def test_qlora_estimate_on_another_architecture(tmp_path):
    _, shape = _tiny_llama(tmp_path)
    plan = TrainingPlan(method="qlora", batch_size=2, seq_len=32, lora_r=4)
    model = prepare_for_plan(load_quantized_model(str(tmp_path)), plan)
    measured = measure_training_memory(model, plan)
    assert estimate_memory(shape, plan).parameters == pytest.approx(measured.parameters, rel=0.02)
    assert _relative_error(shape, plan, measured) <= TOLERANCE


def test_gradient_checkpointing_estimate():
    plan = TrainingPlan(method="lora", batch_size=2, seq_len=64, lora_r=8, gradient_checkpointing=True)
    measured = measure_training_memory(build_model_for_plan(plan), plan)
    assert _relative_error(known_shape("smollm2-135m"), plan, measured) <= TOLERANCE


def test_parameter_counts_agree_with_the_model_and_peft(model_and_tokenizer):
    model, _ = model_and_tokenizer
    shape = ModelShape.from_config(model.config)
    assert shape.n_params == sum(p.numel() for p in model.parameters())
    known = known_shape("smollm2-135m")
    assert (shape.module_shapes(), shape.n_params, shape.vocab) == (known.module_shapes(), known.n_params, known.vocab)
    plan = TrainingPlan(method="lora", lora_r=8, lora_targets=("q_proj", "up_proj"))
    peft_model = build_model_for_plan(plan)
    assert lora_param_count(shape, 8, ("q_proj", "up_proj")) == sum(
        p.numel() for p in peft_model.parameters() if p.requires_grad)


def test_memory_grows_with_tokens_and_lora_saves_static_memory():
    shape = known_shape("llama-2-7b")
    small, large = (estimate_memory(shape, TrainingPlan(method="lora", batch_size=b)) for b in (1, 4))
    assert large.activations > 3.5 * (small.activations - estimate_memory(shape, TrainingPlan(
        method="lora", batch_size=1, seq_len=1)).activations)
    full, lora, qlora = (estimate_memory(shape, TrainingPlan(method=m, weight_dtype="float16")) for m in METHODS)
    assert full.gradients + full.optimizer_states > 50 * (lora.gradients + lora.optimizer_states)
    assert qlora.parameters < 0.35 * lora.parameters


def test_training_flops_full_is_three_forwards_and_lora_about_two():
    shape = known_shape("smollm2-135m")
    full = training_flops(shape, TrainingPlan(method="full"))
    lora = training_flops(shape, TrainingPlan(method="lora"))
    assert 0.66 < lora / full < 0.72


@pytest.mark.parametrize("field,value,message", [
    ("method", "adapter", "method must be one of"),
    ("weight_dtype", "int8", "weight_dtype must be one of"),
    ("autocast_dtype", "float32", "autocast_dtype must be None"),
    ("lora_targets", ("q_proj", "attn"), "lora_targets must be a non-empty subset"),
    ("batch_size", 0, "batch_size and seq_len must be >= 1"),
])
def test_bad_plans_name_the_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        estimate_memory(known_shape("smollm2-135m"), TrainingPlan(**{field: value}))


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(KeyError, match="known: smollm2-135m"):
        known_shape("gpt-5")


def test_plan_round_trip_and_clear_errors(tmp_path):
    plan = TrainingPlan(method="lora", batch_size=4, seq_len=96, lora_targets=("q_proj", "v_proj"))
    estimate = estimate_memory(known_shape("smollm2-135m"), plan)
    save_plan(tmp_path / "plan.json", plan, estimate, steps=3)
    loaded, record = load_plan(tmp_path / "plan.json")
    assert loaded == plan and record["steps"] == 3 and record["estimate"]["total"] == estimate.total
    (tmp_path / "bad.json").write_text(json.dumps({"plan": {"method": "lora", "rank": 4}, "estimate": {"total": 1}}))
    with pytest.raises(ValueError, match="field TrainingPlan does not know"):
        load_plan(tmp_path / "bad.json")
    (tmp_path / "missing.json").write_text(json.dumps({"plan": {}}))
    with pytest.raises(ValueError, match="missing the field 'estimate'"):
        load_plan(tmp_path / "missing.json")


def test_full_fine_tune_bytes_per_parameter_pure_16_bit_and_mixed_precision():
    """The estimator's two stated assumptions: 8 bytes/parameter (pure 16-bit) and the usual 16 (mixed precision)."""
    from ftcourse.estimator import TrainingPlan, estimate_memory, known_shape

    shape = known_shape("llama-2-7b")
    for master, expected in ((False, 8), (True, 16)):
        e = estimate_memory(shape, TrainingPlan(method="full", weight_dtype="bfloat16", master_weights=master))
        assert (e.parameters + e.gradients + e.optimizer_states) / shape.n_params == expected
    fp32 = estimate_memory(shape, TrainingPlan(method="full", weight_dtype="float32", master_weights=True))
    assert (fp32.parameters + fp32.gradients + fp32.optimizer_states) / shape.n_params == 16  # 4 + 4 + 8: no master copy
    lora = TrainingPlan(method="lora", weight_dtype="bfloat16")
    assert estimate_memory(shape, lora) == estimate_memory(shape, TrainingPlan(method="lora", weight_dtype="bfloat16",
                                                                                master_weights=True))


def test_peak_rss_is_measured_in_a_fresh_process_and_errors_name_the_failure():
    """The process's own measurement beside the count: a step's peak is above what building the model added."""
    from ftcourse.estimator import TrainingPlan, measure_peak_rss

    plan = TrainingPlan(method="lora", batch_size=2, seq_len=32, lora_r=4)
    peak = measure_peak_rss(plan)
    assert 0 < peak["model_built"] < peak["step_peak"] < 8e9 and peak["baseline"] > 0
    with pytest.raises(RuntimeError, match="measuring process failed"):
        measure_peak_rss(plan, device="no-such-device")


def test_a_plan_is_trained_as_planned_or_refused():
    """Exercise 1.3 trains float32 weights without checkpointing: a plan saying otherwise is refused by field."""
    TrainingPlan(batch_size=4, seq_len=64, lora_r=4, lora_targets=("q_proj",)).validate_trainable()
    for change in ({"gradient_checkpointing": True}, {"weight_dtype": "bfloat16"}, {"double_quant": True}):
        with pytest.raises(ValueError, match=f"TrainingPlan.{next(iter(change))}="):
            TrainingPlan(**change).validate_trainable()
