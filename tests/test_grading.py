import json

import pytest

from ftcourse import grading
from ftcourse.grading import Verdict, artifact_dir, heldout_seed, run_grader


def test_heldout_seed_default_and_override(monkeypatch):
    monkeypatch.delenv(grading.HELDOUT_SEED_ENV, raising=False)
    assert heldout_seed() == grading.DEFAULT_HELDOUT_SEED
    monkeypatch.setenv(grading.HELDOUT_SEED_ENV, "123")
    assert heldout_seed() == 123
    monkeypatch.setenv(grading.HELDOUT_SEED_ENV, "abc")
    with pytest.raises(ValueError, match="must be an integer, got 'abc'"):
        heldout_seed()


def test_artifact_dir_is_known_and_rejects_unknown(tmp_path):
    assert artifact_dir("03_sft", tmp_path) == tmp_path / "artifacts" / "03_sft"
    with pytest.raises(KeyError, match="Unknown exercise"):
        artifact_dir("99_nothing", tmp_path)


def test_missing_adapter_fails_with_a_clear_message(tmp_path):
    verdict = run_grader("03_sft", artifact_dir("03_sft", tmp_path), split="validation")
    assert not verdict.passed
    assert "No trained adapter found" in verdict.message


def test_a_fake_metrics_file_does_not_count(tmp_path):
    """A learner's own metrics are never read: without a real adapter the grade is a fail."""
    folder = artifact_dir("03_sft", tmp_path)
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({"exact_match": 1.0}))
    (folder / "training.json").write_text(json.dumps({"steps": 1}))
    assert not run_grader("03_sft", folder, split="heldout").passed


def test_verdict_text_lists_each_check():
    v = Verdict("03_sft", "heldout", False, {}, [("exact_match", 0.5, ">=", 0.85, False)], "What to try: more steps")
    text = str(v)
    assert text.startswith("FAIL 03_sft on the heldout split")
    assert "MISS exact_match: 0.500 (needs >= 0.850)" in text and "What to try" in text


def test_plan_exercise_without_artifacts_names_what_is_missing(tmp_path):
    verdict = run_grader("01_when_to_fine_tune", artifact_dir("01_when_to_fine_tune", tmp_path), split="validation")
    assert not verdict.passed
    assert "plan.json" in verdict.message and "adapter_config.json" in verdict.message


def test_plan_exercise_rejects_a_plan_that_is_not_lora(tmp_path):
    """A full fine-tune's plan cannot pass, whatever its estimate: the exercise trains a LoRA adapter."""
    from ftcourse.estimator import TrainingPlan, estimate_memory, known_shape, save_plan
    from ftcourse.presets import get_preset

    folder = artifact_dir("01_when_to_fine_tune", tmp_path)
    (folder / "adapter").mkdir(parents=True)
    (folder / "adapter" / "adapter_config.json").write_text("{}")
    plan = TrainingPlan(method="full", autocast_dtype=get_preset("cpu").autocast_dtype)
    save_plan(folder / "plan.json", plan, estimate_memory(known_shape("smollm2-135m"), plan), steps=1)
    verdict = run_grader("01_when_to_fine_tune", folder, split="validation")
    assert not verdict.passed and "method='lora'" in verdict.message


def test_cleaned_sft_exercise_without_adapter_fails_clearly(tmp_path):
    verdict = run_grader("02_data_and_tooling", artifact_dir("02_data_and_tooling", tmp_path), split="heldout")
    assert not verdict.passed and "No trained adapter found" in verdict.message


def test_capstone_threshold_is_the_capstone_minimum():
    from ftcourse.capstone import MIN_TRAIN_EXAMPLES

    assert grading.SPECS["04_lora"].thresholds["train_examples"] == (">=", MIN_TRAIN_EXAMPLES)


def test_capstone_without_its_task_names_what_is_missing(tmp_path):
    folder = artifact_dir("04_lora", tmp_path)
    (folder / "adapter").mkdir(parents=True)
    (folder / "adapter" / "adapter_config.json").write_text("{}")
    verdict = run_grader("04_lora", folder, split="heldout")
    assert not verdict.passed and "task.py" in verdict.message and "train.jsonl" in verdict.message


def test_capstone_with_a_tiny_task_fails_before_any_model_runs(tmp_path):
    folder = artifact_dir("04_lora", tmp_path)
    (folder / "adapter").mkdir(parents=True)
    (folder / "adapter" / "adapter_config.json").write_text("{}")
    (folder / "task.py").write_text("def make_example(rng):\n    n = rng.randint(1, 9)\n    return f'Double {n}', str(2 * n)\n")
    (folder / "train.jsonl").write_text(json.dumps({"prompt": "Double 1", "answer": "2"}) + "\n")
    verdict = run_grader("04_lora", folder, split="validation")
    assert not verdict.passed and "could not be drawn" in verdict.message and "distinct new prompts" in verdict.message


def test_qlora_exercise_without_adapter_fails_clearly(tmp_path):
    verdict = run_grader("05_quantization_qlora", artifact_dir("05_quantization_qlora", tmp_path), split="heldout")
    assert not verdict.passed and "No trained adapter found" in verdict.message


def test_hidden_test_skips_its_kernel_run_only_where_nbgrader_regrades_it(tmp_path, monkeypatch, capsys):
    from ftcourse.nbgrader_outcome import OutcomeVerdicts

    monkeypatch.delenv(grading.OUTSIDE_KERNEL_ENV, raising=False)
    monkeypatch.setenv("NBGRADER_EXECUTION", "autograde")
    # no OutcomeVerdicts in this process: the hidden test grades in the kernel and fails on missing artifacts
    with pytest.raises(AssertionError, match="No trained adapter"):
        grading.assert_outcome("03_sft", tmp_path)
    OutcomeVerdicts(checks={"sft_final_outcome": {"kind": "outcome", "exercise": "03_sft"},
                            "sft_label_mask_tests": {"kind": "function", "exercise": "03_label_mask", "solution": "x"}})
    assert grading.graded_outside_kernel("03_sft") and not grading.graded_outside_kernel("04_lora")
    grading.assert_outcome("03_sft", tmp_path)  # re-graded after execution: no run in the kernel
    assert "outside the kernel" in capsys.readouterr().out
    monkeypatch.setenv("NBGRADER_EXECUTION", "validate")  # nbgrader validate has no OutcomeVerdicts step
    with pytest.raises(AssertionError, match="No trained adapter"):
        grading.assert_outcome("03_sft", tmp_path)
