"""Function exercises: the grader's inputs and comparison, with the learner's function in this process
(`check_in_kernel`, as a solution notebook's hidden test) and in a child process (as under autograde)."""

import pytest

from conftest import released_sources, solution_sources
from ftcourse.grading import check_in_kernel, registry
from ftcourse.grading.checks import run_check
from ftcourse.grading.learner import Cells, call
from ftcourse.grading.secret import heldout_seed
from ftcourse.presets import get_preset

CPU = get_preset("cpu")
REFERENCE = '''
def build_chat_labels(tokenizer, prompt, answer):
    user = [{"role": "user", "content": prompt}]
    p = tokenizer.apply_chat_template(user, tokenize=True, add_generation_prompt=True)["input_ids"]
    ids = tokenizer.apply_chat_template(user + [{"role": "assistant", "content": answer}], tokenize=True)["input_ids"]
    return list(ids), [-100] * len(p) + list(ids[len(p):])
'''


def _define(source):
    namespace = {}
    exec(source, namespace)
    return namespace


def test_reference_matches_trl():
    assert check_in_kernel("sft_label_mask_tests", CPU, _define(REFERENCE)).passed


def test_unmasked_labels_fail_with_position():
    wrong = REFERENCE.replace("[-100] * len(p) + list(ids[len(p):])", "list(ids)")
    with pytest.raises(AssertionError, match="labels differs first at position 0"):
        check_in_kernel("sft_label_mask_tests", CPU, _define(wrong))


def test_mask_that_drops_end_of_turn_fails():
    wrong = REFERENCE.replace("list(ids[len(p):])", "list(ids[len(p):-2]) + [-100, -100]")
    with pytest.raises(AssertionError, match="labels differs"):
        check_in_kernel("sft_label_mask_tests", CPU, _define(wrong))


def _through_a_child(grade_id: str, sources: dict):
    exercise = registry.exercise(grade_id)
    cells = Cells(sources, "cpu", 0)
    return run_check(exercise, CPU, heldout_seed(), lambda op, inputs, secret_inputs: call(
        cells, exercise.solutions, op, inputs, exercise.provides, secret_inputs))


@pytest.mark.parametrize("source,passed", [
    (REFERENCE, True),
    ("def build_chat_labels(t, p, a):\n    raise NotImplementedError()", False),
    ("x = 1", False),
])
def test_the_child_runs_the_cell_and_the_grader_compares(source, passed, learner_runtime):
    verdict = _through_a_child("sft_label_mask_tests", {"sft_label_mask": source})
    assert verdict.passed is passed, verdict
    if source == "x = 1":
        assert "does not define build_chat_labels" in verdict.message


@pytest.mark.parametrize("grade_id,slug", [("lora_layer_tests", "04_lora"), ("nf4_tests", "05_quantization_qlora"),
                                           ("decision_rules_tests", "01_when_to_fine_tune"),
                                           ("static_bytes_tests", "01_when_to_fine_tune"),
                                           ("bradley_terry_tests", "06_reward_models_rlhf"),
                                           ("dpo_loss_tests", "07_dpo"), ("grpo_advantage_tests", "08_grpo"),
                                           ("distillation_loss_tests", "09_distillation"),
                                           ("info_nce_tests", "10_embedding_fine_tuning")])
def test_reference_passes_and_the_released_stub_fails_through_a_child(grade_id, slug, learner_runtime):
    (solution_id,) = registry.exercise(grade_id).solutions
    reference = solution_sources(slug)[solution_id]
    stub = released_sources(slug)[solution_id]  # what nbgrader hands out: the solution cleared to a stub
    assert _through_a_child(grade_id, {solution_id: reference}).passed
    failed = _through_a_child(grade_id, {solution_id: stub})
    assert not failed.passed and "NotImplementedError" in failed.message, failed


def _static_reference() -> str:
    return solution_sources("01_when_to_fine_tune")["static_bytes"]


@pytest.mark.parametrize("old,new,named", [
    ("12 * shape.n_params if plan.master_weights and width < 4 else 2 * gradients", "2 * gradients",
     "master_weights=True: optimizer_states is 0.3333x"),
    ("gradients, states = 4 * adapters, 8 * adapters", "gradients, states = width * adapters, 2 * width * adapters",
     "bfloat16 weights"),
    ("blocks * (1 + 4 / 256) if plan.double_quant else blocks * 4", "blocks * 4", "double_quant=True: parameters"),
])
def test_a_count_that_misses_one_rule_fails_and_names_the_plan(old, new, named):
    """Each rule of Exercise 1.2 is exercised by the unseen plans: dropping one fails, naming the plan, not the shape."""
    reference = _static_reference()
    assert old in reference
    with pytest.raises(AssertionError, match=named) as failure:
        check_in_kernel("static_bytes_tests", CPU, _define(reference.replace(old, new)))
    assert "unseen-" not in str(failure.value)
    assert check_in_kernel("static_bytes_tests", CPU, _define(reference)).passed


@pytest.mark.parametrize("source,named", [
    ("from ftcourse.estimator import estimate_memory as count\n"
     "def static_bytes(shape, plan):\n    e = count(shape, plan)\n"
     "    return {'parameters': e.parameters, 'gradients': e.gradients, 'optimizer_states': e.optimizer_states}\n",
     "EstimatorFunctionHidden (cell static_bytes, line 3)"),
    ("def static_bytes(shape, plan):\n    import ftcourse.estimator as e\n"
     "    return {'parameters': e.parameter_bytes(shape, plan), 'gradients': 1, 'optimizer_states': 1}\n",
     "EstimatorFunctionHidden (cell static_bytes, line 3)"),
    ("def static_bytes(shape, plan):\n    return {'parameters': float('nan'), 'gradients': float('nan'), "
     "'optimizer_states': float('nan')}\n", "30 of 30 parts differ"),
    ("def static_bytes(shape, plan):\n    return [1, 2, 3]\n", "raised CellError"),
    ("import ftcourse.labs as labs\ndef static_bytes(shape, plan):\n    e = labs.estimate_memory(shape, plan)\n"
     "    return {'parameters': e.parameters, 'gradients': e.gradients, 'optimizer_states': e.optimizer_states}\n",
     "EstimatorFunctionHidden"),  # a copy of the function in another module is hidden too
    ("def static_bytes(shape, plan):\n    raise ValueError(repr(shape) + repr(plan))\n", "does not show its message"),
])
def test_the_estimator_is_hidden_and_nonsense_is_refused(source, named, learner_runtime):
    verdict = _through_a_child("static_bytes_tests", {"static_bytes": source})
    assert not verdict.passed and named in verdict.message, verdict


def test_the_kernel_gets_its_estimator_back_after_a_check():
    import ftcourse.estimator as estimator

    original = estimator.estimate_memory
    namespace = _define("from ftcourse.estimator import estimate_memory\n" + _static_reference())
    assert check_in_kernel("static_bytes_tests", CPU, namespace).passed
    assert estimator.estimate_memory is original and namespace["estimate_memory"] is original


@pytest.mark.parametrize("old,new,named", [
    ("-F.logsigmoid(difference).mean()", "-torch.log(torch.sigmoid(difference)).mean()", "no margin or centring"),  # overflows
    ("difference - margin", "difference + margin", "with margins"),
    ("torch.mean((rewards_chosen + rewards_rejected) ** 2)", "torch.mean(rewards_chosen ** 2 + rewards_rejected ** 2)",
     "with reward centring"),
    ("-F.logsigmoid(difference).mean()", "-F.logsigmoid(difference).sum()", "no margin or centring"),
])
def test_a_bradley_terry_loss_that_misses_one_rule_fails_and_names_the_batch(old, new, named):
    """Each part of Exercise 6.1 is exercised by the unseen batches: a naive log-sigmoid, a margin with the wrong
    sign, the wrong centring term, a sum instead of a mean each fail, naming the first batch that shows it."""
    reference = "\n".join(line for line in solution_sources("06_reward_models_rlhf")["bradley_terry_loss"].splitlines()
                          if "###" not in line)
    assert old in reference
    assert check_in_kernel("bradley_terry_tests", CPU, _define(reference)).passed
    with pytest.raises(AssertionError, match=named):
        check_in_kernel("bradley_terry_tests", CPU, _define(reference.replace(old, new)))


def test_a_bradley_terry_loss_without_a_gradient_is_refused(learner_runtime):
    source = ("import torch\ndef bradley_terry_loss(c, r, margin=None, center_rewards_coefficient=None):\n"
              "    return torch.tensor(0.5)\n")
    verdict = _through_a_child("bradley_terry_tests", {"bradley_terry_loss": source})
    assert not verdict.passed and "no gradient" in verdict.message


@pytest.mark.parametrize("old,new,named", [
    ("-F.logsigmoid(beta * (chosen_ratio - rejected_ratio)).mean()",
     "-torch.log(torch.sigmoid(beta * (chosen_ratio - rejected_ratio))).mean()", "beta 0.5"),  # -inf at the mistake
    ("beta * (chosen_ratio - rejected_ratio)", "(chosen_ratio - rejected_ratio)", "beta 0.1"),  # beta left out
    ("chosen_ratio - rejected_ratio)).mean()", "rejected_ratio - chosen_ratio)).mean()", "beta 0.1"),
    ("policy_rejected_logps - ref_rejected_logps", "policy_rejected_logps", "beta 0.1"),  # no reference
    ("(beta * chosen_ratio).detach()", "chosen_ratio.detach()", "chosen_rewards"),  # rewards without beta
    (").mean()", ").sum()", "beta 0.1"),
])
def test_a_dpo_loss_that_misses_one_rule_fails_and_names_the_batch(old, new, named):
    """Each part of Exercise 7.1 is exercised by the unseen batches: a naive log-sigmoid, beta left out, the sides
    swapped, the reference left out, rewards without beta, a sum instead of a mean each fail, naming a batch or the
    part that differs."""
    reference = "\n".join(line for line in solution_sources("07_dpo")["dpo_loss"].splitlines() if "###" not in line)
    assert old in reference
    assert check_in_kernel("dpo_loss_tests", CPU, _define(reference)).passed
    with pytest.raises(AssertionError, match=named):
        check_in_kernel("dpo_loss_tests", CPU, _define(reference.replace(old, new)))


@pytest.mark.parametrize("body,named", [
    ("    return torch.tensor(0.5), c.detach(), r.detach()\n", "no gradient"),
    ("    loss = -(c - r).mean()\n    return loss, c, r\n", "carries a gradient"),
    ("    return -(c - r).mean()\n", "(loss, chosen_rewards, rejected_rewards)"),
])
def test_a_dpo_loss_of_the_wrong_shape_is_refused_with_the_reason(body, named, learner_runtime):
    source = "import torch\ndef dpo_loss(c, r, rc, rr, beta):\n" + body
    verdict = _through_a_child("dpo_loss_tests", {"dpo_loss": source})
    assert not verdict.passed and named in verdict.message, verdict


@pytest.mark.parametrize("grade_id,cell,source,named", [
    ("dpo_loss_tests", "dpo_loss",
     "from ftcourse import dpo as d\ndef dpo_loss(c, r, rc, rr, beta):\n    loss, _ = d.dpo_trainer_loss(c, r, rc, rr, beta=beta)\n"
     "    return loss, (beta * (c - rc)).detach(), (beta * (r - rr)).detach()\n", "reached ftcourse.dpo.dpo_trainer_loss"),
    ("bradley_terry_tests", "bradley_terry_loss",
     "from ftcourse.preferences import reward_trainer_loss\n"
     "def bradley_terry_loss(c, r, margin=None, center_rewards_coefficient=None):\n"
     "    return reward_trainer_loss(c, r, margin, center_rewards_coefficient)\n", "reached ftcourse.preferences.reward_trainer_loss"),
    ("dpo_loss_tests", "dpo_loss",
     "import torch.nn.functional as F\ndef dpo_loss(c, r, rc, rr, beta):\n"
     "    loss = -F.logsigmoid(beta * ((c - rc) - (r.detach() - rr))).mean()\n"
     "    return loss, (beta * (c - rc)).detach(), (beta * (r - rr)).detach()\n", "does not depend on policy_rejected_logps"),
])
def test_a_loss_exercise_that_calls_the_library_or_drops_an_input_is_refused(grade_id, cell, source, named,
                                                                           learner_runtime):
    """6.1 and 7.1 are compared with TRL's loss: the child hides it (and the course's wrapper of it) while the
    learner's function runs, as 1.2 hides the estimator; a loss that ignores an input is named, not a grader fault."""
    verdict = _through_a_child(grade_id, {cell: source})
    assert not verdict.passed and named in verdict.message, verdict


@pytest.mark.parametrize("old,new,named", [
    ("/ (count - 1)).sqrt()", "/ count).sqrt()", "checker's 0/1 rewards"),  # the population std, not torch's default
    ("torch.nansum(rewards * reward_weights, dim=1)", "torch.nansum(rewards, dim=1)", "weighted"),  # weights ignored
    ("total[unscorable] = float(\"nan\")", "pass", "no function scores"),  # an unscorable reply counted as reward 0
    ("grouped = total.view(-1, num_generations)", "grouped = total.view(1, -1)", "weighted"),  # one baseline for all
    ("(grouped - mean) / (std + 1e-4)", "(grouped - mean)", "weighted"),  # scale_rewards="none" instead of "group"
])
def test_a_group_advantage_that_misses_one_rule_fails_and_names_the_batch(old, new, named):
    """Each part of Exercise 8.1 is exercised by the unseen batches: the population standard deviation, the weights
    left out, an unscorable reply counted as 0, one baseline for the whole batch, no scaling each fail, naming the
    batch whose rule it breaks."""
    reference = "\n".join(line for line in solution_sources("08_grpo")["group_advantages"].splitlines()
                          if "###" not in line)
    assert old in reference
    assert check_in_kernel("grpo_advantage_tests", CPU, _define(reference)).passed
    with pytest.raises(AssertionError, match=named):
        check_in_kernel("grpo_advantage_tests", CPU, _define(reference.replace(old, new)))


@pytest.mark.parametrize("source,named", [
    ("from ftcourse.grpo import trl_group_advantages\ndef group_advantages(r, w, g):\n"
     "    return trl_group_advantages(r, w, g)\n", "reached ftcourse.grpo.trl_group_advantages"),
    ("import ftcourse.grpo\ndef group_advantages(r, w, g, _f=ftcourse.grpo.trl_group_advantages):\n"
     "    return _f(r, w, g)\n", "hidden while it runs"),  # captured before the op: its body is swapped too
    ("def group_advantages(r, w, g):\n    return [0.0] * len(r)\n", "must return a tensor"),
    ("import torch\ndef group_advantages(r, w, g):\n    return torch.zeros(3)\n", "expected"),
])
def test_a_group_advantage_that_calls_trl_or_has_the_wrong_shape_is_refused(source, named, learner_runtime):
    verdict = _through_a_child("grpo_advantage_tests", {"group_advantages": source})
    assert not verdict.passed and named in verdict.message, verdict


def test_a_forged_tensor_with_negative_dimensions_is_refused():
    from ftcourse.grading.child import decode_tensor, encode_tensor

    import torch

    raw = encode_tensor(torch.zeros(8))
    with pytest.raises(ValueError, match="carries"):
        decode_tensor(raw | {"shape": [-2, -4]})


@pytest.mark.parametrize("old,new,named", [
    # no normalisation: a dot product, not the cosine (the long and short rows give it away)
    ("scale * F.normalize(query_embeddings, dim=-1) @ F.normalize(document_embeddings, dim=-1).T",
     "scale * query_embeddings @ document_embeddings.T", "pairs only"),
    # the scale left out
    ("logits = scale * F.normalize", "logits = 20.0 * F.normalize", "scale 50"),
    # the hard negatives left out of the softmax
    ("@ F.normalize(document_embeddings, dim=-1).T",
     "@ F.normalize(document_embeddings[:len(query_embeddings)], dim=-1).T", "one hard negative per query"),
    # a sum over the batch instead of its mean
    ("torch.arange(len(query_embeddings), device=logits.device))",
     "torch.arange(len(query_embeddings), device=logits.device), reduction='sum')", "pairs only"),
])
def test_an_info_nce_loss_that_misses_one_rule_fails_and_names_the_batch(old, new, named):
    """Each part of Exercise 10.1 is exercised by the unseen batches: the cosine (not the dot product), the scale,
    the hard negatives in every query's softmax, the batch mean; each fails, naming a batch whose rule it breaks."""
    reference = "\n".join(line for line in solution_sources("10_embedding_fine_tuning")["info_nce_loss"].splitlines()
                          if "###" not in line)
    assert old in reference
    assert check_in_kernel("info_nce_tests", CPU, _define(reference)).passed
    with pytest.raises(AssertionError, match=named):
        check_in_kernel("info_nce_tests", CPU, _define(reference.replace(old, new)))


@pytest.mark.parametrize("source,named", [
    ("from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss\n"
     "def info_nce_loss(q, d, scale):\n"
     "    return MultipleNegativesRankingLoss(None, scale=scale).compute_loss_from_embeddings([q] + list(d.split(len(q))), None)\n",
     "reached MultipleNegativesRankingLoss.compute_loss_from_embeddings"),
    ("def info_nce_loss(q, d, scale):\n"  # imported only when called: the class is already hidden
     "    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss as M\n"
     "    return M(None, scale=scale).compute_loss_from_embeddings([q] + list(d.split(len(q))), None)\n",
     "reached MultipleNegativesRankingLoss.compute_loss_from_embeddings"),
    ("from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss as M\n"
     "keep = M.compute_loss_from_embeddings\n"  # a reference kept before the check: its body is swapped too
     "def info_nce_loss(q, d, scale):\n    return keep(M(None, scale=scale), [q] + list(d.split(len(q))), None)\n",
     "hidden while it runs"),
    ("import torch\ndef info_nce_loss(q, d, scale):\n    return torch.tensor(1.0)\n", "has no gradient"),
    ("import torch.nn.functional as F, torch\ndef info_nce_loss(q, d, scale):\n"
     "    logits = scale * F.normalize(q, dim=-1) @ F.normalize(d, dim=-1).T.detach()\n"
     "    return F.cross_entropy(logits, torch.arange(len(q)))\n", "does not depend on document_embeddings"),
])
def test_an_info_nce_loss_that_calls_the_library_or_drops_an_input_is_refused(source, named, learner_runtime):
    """10.1 is compared with sentence-transformers' loss: the child hides it while the learner's function runs."""
    verdict = _through_a_child("info_nce_tests", {"info_nce_loss": source})
    assert not verdict.passed and named in verdict.message, verdict


@pytest.mark.parametrize("old,new,named", [
    # the T^2 factor left out: only T 1 (and alpha 0) survive
    ("return alpha * temperature**2 * soft", "return alpha * soft", "T 2"),
    # the labels' term at temperature T instead of 1
    ("-torch.log_softmax(student_logits, dim=-1)", "-torch.log_softmax(student_logits / temperature, dim=-1)",
     "T 2"),
    # KL the wrong way round: KL(student || teacher)
    ("soft = (log_p.exp() * (log_p - log_q)).sum(-1).mean()", "soft = (log_q.exp() * (log_q - log_p)).sum(-1).mean()",
     "T 1, alpha 0.5"),
    # log(softmax(...)): infinities on logits in the hundreds
    ("log_p = torch.log_softmax(teacher_logits / temperature, dim=-1)",
     "log_p = torch.softmax(teacher_logits / temperature, dim=-1).log()", "logits in the hundreds"),
    # a sum over rows instead of their mean
    ("soft = (log_p.exp() * (log_p - log_q)).sum(-1).mean()", "soft = (log_p.exp() * (log_p - log_q)).sum()",
     "T 1, alpha 0.5"),
])
def test_a_distillation_loss_that_misses_one_rule_fails_and_names_the_batch(old, new, named):
    """Each part of Exercise 9.1 is exercised by the unseen batches: the T² factor, the labels' term at temperature
    1, the direction of the KL, a stable log-softmax, the mean over rows; each fails, naming one of the (first two)
    batches it breaks."""
    reference = "\n".join(line for line in solution_sources("09_distillation")["distillation_loss"].splitlines()
                          if "###" not in line)
    assert old in reference
    assert check_in_kernel("distillation_loss_tests", CPU, _define(reference)).passed
    with pytest.raises(AssertionError, match=named):
        check_in_kernel("distillation_loss_tests", CPU, _define(reference.replace(old, new)))


@pytest.mark.parametrize("source,named", [
    ("import torch.nn.functional as F\n"
     "def distillation_loss(s, t, y, T, a):\n"
     "    soft = F.kl_div(F.log_softmax(s / T, -1), F.log_softmax(t / T, -1), log_target=True, reduction='batchmean')\n"
     "    return a * T**2 * soft + (1 - a) * F.cross_entropy(s, y)\n", "reached torch.nn.functional.kl_div"),
    ("from ftcourse import distill\n"
     "def distillation_loss(s, t, y, T, a):\n    return distill.distillation_loss(s, t, y, T, a)\n",
     "reached ftcourse.distill.distillation_loss"),
    ("import torch\n"  # the operator behind F.kl_div
     "def distillation_loss(s, t, y, T, a):\n"
     "    soft = torch.kl_div(torch.log_softmax(s / T, -1), torch.log_softmax(t / T, -1), 2, log_target=True) / len(s)\n"
     "    return a * T**2 * soft + (1 - a) * torch.nn.functional.cross_entropy(s, y)\n", "reached torch.kl_div"),
    ("from ftcourse.distill import distillation_loss as d\nkeep = [d]\n"  # a reference kept out of sight: its body
     "def distillation_loss(s, t, y, T, a):\n    return keep[0](s, t, y, T, a)\n", "hidden while it runs"),
    ("import torch\ndef distillation_loss(s, t, y, T, a):\n    return torch.tensor(1.0)\n", "has no gradient"),
])
def test_a_distillation_loss_that_calls_the_library_is_refused(source, named, learner_runtime):
    """9.1 is compared with PyTorch's kl_div (through the course's loss): both are hidden while the learner's runs."""
    verdict = _through_a_child("distillation_loss_tests", {"distillation_loss": source})
    assert not verdict.passed and named in verdict.message, verdict


def _library_answers(grade_id: str, library) -> list:
    """The library's own answers to the unseen batches, encoded as a child would send them."""
    from ftcourse.grading.checks import CHECKS
    from ftcourse.grading.child import encode_tensor

    inputs, _ = CHECKS[grade_id].inputs(CPU, heldout_seed())
    return [{k: (encode_tensor(v) if hasattr(v, "shape") else v) for k, v in library(case).items()}
            for case in inputs["cases"]]


@pytest.mark.parametrize("grade_id", ["bradley_terry_tests", "dpo_loss_tests"])
@pytest.mark.parametrize("spoil,named", [
    (lambda a: {**a, "loss": float("nan")}, ": loss differ"),  # NaN never passes
    (lambda a: {**a, "grad_chosen": "not a tensor"}, "could not be read"),
    (lambda a: {k: v for k, v in a.items() if k != "grad_rejected"}, "could not be read"),
    (lambda a: {**a, "grad_chosen": {**a["grad_chosen"], "dtype": "bool", "b64": ""}}, "could not be read"),
    (lambda a: "a string", "could not be read"),
])
def test_the_loss_judges_of_6_1_and_7_1_fail_a_malformed_answer_with_a_reason_and_never_crash(grade_id, spoil, named):
    """The grader's side of 6.1 and 7.1 (`checks._loss_judge`) on answers a child could send: the library's own
    answers pass; one spoiled batch (a NaN loss, a part that is no tensor, a missing part, bytes that are not the
    tensor they claim, not a dict at all) fails with the reason, as a verdict, not an exception."""
    from ftcourse.grading.checks import trl_bradley_terry, trl_dpo

    library = trl_bradley_terry if grade_id == "bradley_terry_tests" else trl_dpo
    answers = [{k: v for k, v in a.items() if k != "trl_rewards"} for a in _library_answers(grade_id, library)]
    exercise = registry.exercise(grade_id)
    assert run_check(exercise, CPU, heldout_seed(), lambda op, inputs, secret: answers).passed
    spoiled = answers[:1] + [spoil(answers[1])] + answers[2:]
    verdict = run_check(exercise, CPU, heldout_seed(), lambda op, inputs, secret: spoiled)
    assert not verdict.passed and named in verdict.message, verdict
    short = run_check(exercise, CPU, heldout_seed(), lambda op, inputs, secret: answers[:-1])
    assert not short.passed and "no result for every batch" in short.message, short
