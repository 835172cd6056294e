"""The decision guide of notebook 01: its hidden scenarios, its check, and the notebook's solution."""

import pytest

from conftest import solution_cell
from ftcourse.decision import APPROACHES, MANY_DEMONSTRATIONS, Scenario, check_approach, method_fits
from ftcourse.function_checks import check_choose_approach, hidden_scenarios


@pytest.fixture(scope="module")
def choose_approach():
    return solution_cell("01_when_to_fine_tune", "decision_rules")["choose_approach"]


def test_hidden_scenarios_cover_every_approach():
    assert {want for _, want in hidden_scenarios()} == set(APPROACHES)


def test_hidden_answers_for_the_memory_rules_follow_the_estimator():
    """Rules 7-10 are decided by the estimator: the stored answers must agree with it."""
    for scenario, want in hidden_scenarios():
        if want not in ("sft", "lora", "qlora") or scenario.wants_smaller_model or scenario.has_verifiable_reward:
            continue
        full = scenario.n_demonstrations >= MANY_DEMONSTRATIONS and method_fits(scenario, "full")
        expected = "sft" if full else "lora" if method_fits(scenario, "lora") else "qlora"
        assert want == expected, scenario.description


def test_the_notebook_solution_passes_and_a_shortcut_fails_with_the_scenario_named(choose_approach):
    assert "unseen scenarios" in check_choose_approach(choose_approach)
    with pytest.raises(AssertionError, match="differ from the guide") as info:
        check_choose_approach(lambda s: "lora")
    assert "Annotators ranked pairs" in str(info.value)


def test_rule_order_matters(choose_approach):
    """A checker with plenty of demonstrations is not a GRPO case."""
    def grpo_first(s):
        return "grpo" if s.has_verifiable_reward else choose_approach(s)

    with pytest.raises(AssertionError, match="30k reviewed solutions"):
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
    with pytest.raises(ValueError, match="'finetune' is not an approach"):
        check_approach("finetune")
