"""The decision guide of notebook 01: the grader's scenarios, its check, and the notebook's solution."""

import pytest

from conftest import solution_cell
from ftcourse.decision import APPROACHES, MANY_DEMONSTRATIONS, Scenario, check_approach, method_fits, notebook_for
from ftcourse.grading import check_in_kernel
from ftcourse.grading.checks import DECISION_CASES, decision_cases
from ftcourse.presets import get_preset


@pytest.fixture(scope="module")
def choose_approach():
    return solution_cell("01_when_to_fine_tune", "decision_rules")["choose_approach"]


def check_choose_approach(fn):
    return check_in_kernel("decision_rules_tests", get_preset("cpu"), {"choose_approach": fn})


@pytest.mark.parametrize("seed", range(40))
def test_scenarios_built_for_a_rule_are_answered_by_the_guide(choose_approach, seed):
    """The grader builds each scenario for one rule of the table (no solver on its side): the notebook's
    reference solution, which follows the table, must agree with every answer, for any secret."""
    scenarios, key = decision_cases(seed)
    for fields, (rule, want) in zip(scenarios, key):
        assert choose_approach(Scenario(**fields)) == want, (rule, fields)


def test_every_rule_and_every_answer_is_tested():
    scenarios, key = decision_cases(7)
    assert {case for case, _ in key} == set(DECISION_CASES)
    assert {answer for _, answer in key} == set(APPROACHES) - {"grpo+full"}  # GRPO has few demonstrations by rule 4
    assert all(s["description"].startswith("unseen scenario") for s in scenarios)  # nothing names its rule


def test_grpo_needs_a_model_that_sometimes_succeeds(choose_approach):
    checkable = dict(has_verifiable_reward=True, n_demonstrations=20)
    assert choose_approach(Scenario("some success", base_success_rate=0.1, **checkable)) == "grpo+lora"
    assert choose_approach(Scenario("never right", base_success_rate=0.0, **checkable)) == "collect_data"


def test_answers_name_a_signal_and_a_parameterisation_taught_by_the_course():
    assert notebook_for("sft+lora") == ["03_sft", "04_lora"]
    assert notebook_for("dpo+qlora") == ["05_quantization_qlora", "07_dpo"]
    assert notebook_for("retrieval") == ["10_embedding_fine_tuning"]
    assert "sft" not in APPROACHES  # a signal alone is not an answer: the parameterisation is a second choice


def test_the_notebook_solution_passes_and_a_shortcut_fails_with_the_rule_named(choose_approach):
    assert check_choose_approach(choose_approach).passed
    with pytest.raises(AssertionError, match="differ from the guide") as info:
        check_choose_approach(lambda s: "lora")
    assert "signal rule 1" in str(info.value) and "unseen scenario" not in str(info.value).split("What to try")[0].split(
        "they are")[0].replace("unseen scenarios differ", "")


def test_rule_order_matters(choose_approach):
    """A checker with plenty of demonstrations is not a GRPO case."""
    def grpo_first(s):
        return "grpo+lora" if s.has_verifiable_reward else choose_approach(s)

    with pytest.raises(AssertionError, match="differ from the guide"):
        check_choose_approach(grpo_first)


def test_memory_rules_follow_the_estimator():
    t4 = dict(n_demonstrations=5_000, gpu_gb=16)
    assert not method_fits(Scenario("7B full", model="llama-2-7b", **t4), "full")
    assert not method_fits(Scenario("7B LoRA", model="llama-2-7b", **t4), "lora")
    assert method_fits(Scenario("7B QLoRA", model="llama-2-7b", **t4), "qlora")
    assert method_fits(Scenario("135M full", **t4), "full")


def test_bad_scenarios_and_answers_are_named():
    with pytest.raises(KeyError, match="Unknown model 'gpt-9'"):
        Scenario("x", model="gpt-9")
    with pytest.raises(ValueError, match="n_demonstrations must be >= 0"):
        Scenario("x", n_demonstrations=-1)
    with pytest.raises(ValueError, match="base_success_rate is a share"):
        Scenario("x", base_success_rate=1.5)
    with pytest.raises(ValueError, match="'finetune' is not an answer"):
        check_approach("finetune")
