"""Notebook 09's instruments: a layer-pruned student of the course model, the distillation loss against a
from-scratch version (as a learner writes it) and PyTorch's `kl_div`, and the distillation trainer against the
course's SFT trainer."""

import pytest
import torch
import torch.nn.functional as F

from ftcourse import distill


def from_scratch_distillation_loss(student, teacher, targets, temperature, alpha):
    """Soft targets: T^2 times the mean over rows of sum_v p_teacher(v) (log p_teacher(v) - log p_student(v)), both
    at temperature T; hard labels: the mean negative log-probability of the target at temperature 1."""
    p_teacher = torch.softmax(teacher / temperature, dim=-1)
    log_ratio = torch.log_softmax(teacher / temperature, dim=-1) - torch.log_softmax(student / temperature, dim=-1)
    soft = (p_teacher * log_ratio).sum(-1).mean()
    hard = -torch.log_softmax(student, dim=-1).gather(1, targets[:, None]).mean()
    return alpha * temperature**2 * soft + (1 - alpha) * hard


@pytest.mark.parametrize("temperature,alpha", [(1.0, 0.5), (2.0, 0.5), (4.0, 0.9), (2.0, 0.0), (0.5, 1.0)])
def test_distillation_loss_equals_the_from_scratch_formula_with_its_gradients(temperature, alpha):
    generator = torch.Generator().manual_seed(3)
    student = torch.randn(12, 50, generator=generator, requires_grad=True)
    teacher = 3 * torch.randn(12, 50, generator=generator)
    targets = torch.randint(0, 50, (12,), generator=generator)
    library = distill.distillation_loss(student, teacher, targets, temperature, alpha)
    ours = from_scratch_distillation_loss(student, teacher, targets, temperature, alpha)
    assert library.item() == pytest.approx(ours.item(), rel=1e-5)
    (library_grad,) = torch.autograd.grad(library, student)
    (our_grad,) = torch.autograd.grad(from_scratch_distillation_loss(student, teacher, targets, temperature, alpha),
                                      student)
    torch.testing.assert_close(library_grad, our_grad, rtol=1e-4, atol=1e-7)
    if alpha == 0:
        assert library.item() == pytest.approx(F.cross_entropy(student, targets).item(), rel=1e-6)


def test_distillation_loss_is_zero_on_the_teachers_own_logits_and_refuses_bad_input():
    logits = torch.randn(5, 20)
    assert distill.distillation_loss(logits, logits, torch.zeros(5, dtype=torch.long), 2.0, 1.0).item() == \
        pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        distill.distillation_loss(logits, logits, torch.zeros(5, dtype=torch.long), 0.0, 0.5)
    with pytest.raises(ValueError, match="alpha in"):
        distill.distillation_loss(logits, logits, torch.zeros(5, dtype=torch.long), 1.0, 1.5)
    with pytest.raises(ValueError, match="one shape"):
        distill.distillation_loss(logits, torch.randn(5, 21), torch.zeros(5, dtype=torch.long), 1.0, 0.5)


@pytest.fixture(scope="module")
def teacher():
    from ftcourse.models import load_model

    return load_model("embedded", "cpu", seed=0).eval()


def test_a_layer_pruned_student_keeps_the_teachers_weights_and_is_smaller(teacher):
    from ftcourse.models import load_tokenizer

    tokenizer = load_tokenizer("embedded")
    batch = tokenizer(["Write the date as YYYY-MM-DD: March 3, 1999"], return_tensors="pt")
    layers = teacher.config.num_hidden_layers
    whole = distill.layer_pruned_student(teacher, range(layers))
    with torch.no_grad():
        torch.testing.assert_close(whole(**batch).logits, teacher(**batch).logits, rtol=0, atol=0)
    half = distill.layer_pruned_student(teacher, range(0, layers, 2))
    per_layer = sum(p.numel() for p in teacher.model.layers[0].parameters())
    assert half.config.num_hidden_layers == layers // 2 and teacher.config.num_hidden_layers == layers
    assert distill.parameter_count(half) == distill.parameter_count(teacher) - (layers - layers // 2) * per_layer
    torch.testing.assert_close(half.model.layers[1].mlp.up_proj.weight, teacher.model.layers[2].mlp.up_proj.weight)
    assert half.generation_config.eos_token_id == teacher.generation_config.eos_token_id
    for bad in ([], [3, 1], [0, 0], [0, layers]):
        with pytest.raises(ValueError, match="keep must list"):
            distill.layer_pruned_student(teacher, bad)


def test_the_distillation_trainer_at_alpha_0_is_the_sft_loss_and_at_alpha_1_is_zero_against_itself(teacher, tmp_path,
                                                                                                   float32_cpu_preset):
    """The first step's loss (before any update): alpha 0 equals the course's SFT trainer on the same batch; a student
    that is the whole teacher has zero soft loss."""
    from ftcourse.models import load_tokenizer
    from ftcourse.tasks import date_task_splits
    from ftcourse.training import SFTSetup, completion_only_trainer, sft_config, to_prompt_completion

    preset = float32_cpu_preset  # float32 on every machine: the shared prefix's losses agree to rounding
    tokenizer = load_tokenizer("embedded")
    data = to_prompt_completion(date_task_splits(16, 4)["train"])
    setup = SFTSetup(method="full", max_steps=1, learning_rate=1e-5, batch_size=4, warmup_steps=0, seed=0)

    def first_loss(trainer_cls, student):
        torch.manual_seed(0)
        trainer = trainer_cls(model=student, args=sft_config(setup, preset, tmp_path / trainer_cls.__name__),
                              train_dataset=data, processing_class=tokenizer)
        trainer.train()
        return next(h["loss"] for h in trainer.state.log_history if "loss" in h)

    pruned = list(range(0, teacher.config.num_hidden_layers, 3))
    sft = first_loss(completion_only_trainer(), distill.layer_pruned_student(teacher, pruned))
    distilled = first_loss(distill.distillation_trainer(teacher, 2.0, 0.0), distill.layer_pruned_student(teacher, pruned))
    assert distilled == pytest.approx(sft, rel=1e-4) and sft > 1.0  # a pruned student starts far from the labels
    itself = first_loss(distill.distillation_trainer(teacher, 2.0, 1.0),
                        distill.layer_pruned_student(teacher, range(teacher.config.num_hidden_layers)))
    assert itself == pytest.approx(0.0, abs=1e-3)
    # given the CPU preset, the batch's common first columns run once through the student and the teacher: the same
    # loss, and the student's backbone ran a one-row prefix pass and the rest of each row
    assert preset.share_prompt_forward
    plain = first_loss(distill.distillation_trainer(teacher, 2.0, 0.5), distill.layer_pruned_student(teacher, pruned))
    shared_cls = distill.distillation_trainer(teacher, 2.0, 0.5, preset=preset)
    shared_cls.backbone_positions = calls = []
    shared = first_loss(shared_cls, distill.layer_pruned_student(teacher, pruned))
    assert shared == pytest.approx(plain, rel=1e-4)
    assert len(calls) == 2 and calls[0][0] == 1 and calls[1][0] == setup.batch_size, calls


def test_the_teacher_logits_are_computed_once_per_row_and_equal_a_fresh_forward_pass(teacher, tmp_path):
    """The distillation trainer keeps the frozen teacher's logits per row: a row seen again, in another order or
    another batch (padded to another length), gets what a fresh forward pass gives, without one; with room for a
    few rows, the kept and the computed ones are put back in the batch's order; with none, every row is computed;
    and training uses what it kept."""
    from ftcourse.models import load_tokenizer
    from ftcourse.presets import get_preset
    from ftcourse.tasks import date_task_splits
    from ftcourse.training import SFTSetup, completion_logits, sft_config, to_prompt_completion

    preset = get_preset("cpu")
    setup = SFTSetup(method="full", max_steps=4, learning_rate=1e-5, batch_size=4, warmup_steps=0, seed=0,
                     layout="padded")
    trainer_cls = distill.distillation_trainer(teacher, 2.0, 0.5)
    trainer = trainer_cls(model=distill.layer_pruned_student(teacher, [0, 1]), args=sft_config(setup, preset, tmp_path),
                          train_dataset=to_prompt_completion(date_task_splits(8, 4)["train"]),
                          processing_class=load_tokenizer("embedded"))
    batches = list(trainer.get_train_dataloader())
    assert len(batches) == 2 and any((b["attention_mask"] == 0).any() for b in batches)  # rows of several lengths
    flipped = [{k: v.flip(0) for k, v in b.items()} for b in batches]  # the same rows, another order
    collate = trainer.get_train_dataloader().collate_fn  # the trainer's collator, unused columns removed
    mixed = collate([trainer.train_dataset[i] for i in (0, 3, 4, 7)])  # rows of both batches
    kept, none_kept, some_kept = (distill.TeacherLogits(teacher, mb) for mb in (256, 0, 5))  # ~2 MB a row
    for batch in batches + flipped[::-1] + [mixed]:
        mask = batch["labels"][:, 1:] != -100
        with torch.no_grad():
            fresh = completion_logits(teacher, batch, mask).float()
            for logits in (kept, none_kept, some_kept):
                assert torch.allclose(logits(batch, mask), fresh, atol=1e-4)
    assert (kept.computed, kept.reused, len(kept.kept)) == (8, 12, 8)
    assert (none_kept.computed, none_kept.reused, len(none_kept.kept)) == (20, 0, 0)
    assert 0 < len(some_kept.kept) < 8 and some_kept.reused > 0 and some_kept.computed > 8  # kept and computed mixed
    trainer.train()  # 4 steps of 4: each of the 8 rows twice
    assert (trainer_cls.teacher_logits.computed, trainer_cls.teacher_logits.reused) == (8, 8)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_the_soft_term_is_trls_gkd_loss_at_beta_0_times_t_squared(temperature):
    """TRL's distillation loss where its API fits: `GKDTrainer.generalized_jsd_loss` (trl.experimental, an unstable
    API) with beta 0 is the forward KL(teacher || student) at temperature T over the labelled positions, without the
    T^2 factor and without the labels' term; ours at alpha 1 on the same positions is T^2 times it."""
    from trl.experimental.gkd.gkd_trainer import GKDTrainer

    generator = torch.Generator().manual_seed(5)
    student, teacher = torch.randn(3, 7, 40, generator=generator), 2 * torch.randn(3, 7, 40, generator=generator)
    labels = torch.randint(0, 40, (3, 7), generator=generator)
    labels[:, :3] = -100  # the prompt
    labels[2, 5:] = -100  # padding
    mask = labels != -100
    trl_loss = GKDTrainer.generalized_jsd_loss(student, teacher, labels=labels, beta=0.0, temperature=temperature)
    ours = distill.distillation_loss(student[mask], teacher[mask], labels[mask], temperature, alpha=1.0)
    assert ours.item() == pytest.approx(temperature**2 * trl_loss.item(), rel=1e-5)


def test_the_student_keeps_the_first_two_thirds_of_any_teachers_layers_and_its_last():
    assert distill.student_layers(30) == distill.STUDENT_LAYERS == tuple(range(20)) + (29,)
    assert distill.student_layers(24) == tuple(range(16)) + (23,)  # the a100 preset's model
    with pytest.raises(ValueError, match="at least 3 decoder layers"):
        distill.student_layers(2)


def test_the_student_data_choices_use_the_labels_and_the_teachers_answers_as_said():
    from ftcourse.tasks import Example

    train = [Example(f"p{i}", f"a{i}") for i in range(20)]
    answers = [f"t{i}" if i != 18 else "" for i in range(20)]  # the teacher left prompt 18 without an answer
    assert distill.distillation_examples("labels", train, answers, labelled=4) == train[:4]
    teacher = distill.distillation_examples("teacher answers", train, answers, labelled=4)
    assert [e.answer for e in teacher] == [f"t{i}" for i in range(20) if i != 18]
    mixed = distill.distillation_examples("teacher answers, labels where known", train, answers, labelled=4)
    assert mixed[:4] == train[:4] and [e.answer for e in mixed[4:]] == [f"t{i}" for i in range(4, 20) if i != 18]
    with pytest.raises(ValueError, match="training_data must be one of"):
        distill.distillation_examples("teacher", train, answers)
    with pytest.raises(ValueError, match="one answer per training prompt"):
        distill.distillation_examples("labels", train, answers[:3])


@pytest.mark.parametrize("change,named", [
    ({"training_data": "soft"}, "training_data must be one of"),
    ({"temperature": 0.1}, "temperature must be a number in [0.5, 10]"),
    ({"alpha": 1.5}, "alpha must be a number in [0, 1]"),
    ({"max_steps": 33}, "max_steps must be at most 32"),
    ({"gradient_accumulation_steps": 4}, "gradient_accumulation_steps = 4: this exercise keeps"),
    ({"per_device_train_batch_size": 64}, "per_device_train_batch_size must be an integer between 1 and 32"),
])
def test_exercise_9_2_choices_are_checked_naming_the_field(change, named):
    from trl import SFTConfig

    from ftcourse.grading import registry
    from ftcourse.presets import get_preset
    from ftcourse.training import RecipeError

    cpu = get_preset("cpu")
    budget = registry.exercise("distill_final_outcome").step_budget(cpu)
    choices = {"training_data": "teacher answers", "temperature": 1.0, "alpha": 0.0}
    config = {"max_steps": 32, "per_device_train_batch_size": 8, "learning_rate": 5e-4, "seed": 0}
    accepted = distill.distillation_choices(SFTConfig(output_dir="x", **config, **distill.preset_student_args(cpu)),
                                            *choices.values(), cpu, budget)
    assert accepted["sft"]["max_steps"] == 32 and accepted["training_data"] == "teacher answers"
    choices |= {k: v for k, v in change.items() if k in choices}
    config |= {k: v for k, v in change.items() if k not in choices}
    with pytest.raises(RecipeError, match=named.replace("[", r"\[").replace("]", r"\]")):
        distill.distillation_choices(SFTConfig(output_dir="x", **config, **distill.preset_student_args(cpu)), *choices.values(),
                                     cpu, budget)


def test_a_saved_student_loads_into_the_students_architecture_and_nothing_else(teacher, tmp_path):
    student = distill.layer_pruned_student(teacher, distill.STUDENT_LAYERS)
    with torch.no_grad():
        student.model.layers[3].mlp.up_proj.weight.add_(0.01)  # trained: no longer the teacher's layer
    distill.save_student(student, tmp_path / "student")
    loaded = distill.load_student(teacher, tmp_path / "student")
    assert loaded.config.num_hidden_layers == len(distill.STUDENT_LAYERS)
    torch.testing.assert_close(loaded.model.layers[3].mlp.up_proj.weight, student.model.layers[3].mlp.up_proj.weight)
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()  # tied, as the teacher's
    with pytest.raises(FileNotFoundError, match="No student weights"):
        distill.load_student(teacher, tmp_path / "nothing")
    distill.save_student(distill.layer_pruned_student(teacher, range(0, 30, 2)), tmp_path / "other")
    with pytest.raises(ValueError, match="21-layer student"):  # another student's tensors are refused
        distill.load_student(teacher, tmp_path / "other")


def test_answer_logits_are_the_positions_that_predict_the_answer(teacher):
    from ftcourse.models import load_tokenizer
    from ftcourse.tasks import Example

    tokenizer = load_tokenizer("embedded")
    examples = [Example("Write 3 as a word.", "three"), Example("Write 12 as digits.", "12")]
    logits, targets, owners = distill.answer_logits(teacher, tokenizer, examples)
    lengths = [len(tokenizer(e.answer, add_special_tokens=False)["input_ids"]) for e in examples]
    assert logits.shape == (sum(lengths), teacher.config.vocab_size) and owners.tolist() == [0] * lengths[0] + [1] * lengths[1]
    assert tokenizer.decode(targets[:lengths[0]]) == "three"
    assert distill.distillation_loss(logits, logits, targets, 2.0, 1.0).item() == pytest.approx(0.0, abs=1e-5)


def test_the_distillation_lab_converges_with_soft_targets_and_softens_with_temperature():
    """The lab's numbers on peaked logits: soft targets alone bring the student's distribution to the teacher's
    (KL down fiftyfold, its second choice learned within a factor of 2); the label alone leaves the KL where it was; the soft
    targets' entropy rises with T."""
    from ftcourse import labs

    logits = torch.randn(2000, generator=torch.Generator().manual_seed(0))
    logits[7], logits[3] = 12.0, 10.5
    soft = labs.distillation_lab_numbers(logits, 7, 2.0, 1.0)
    assert soft["kl"][-1] < soft["kl"][0] / 50 and soft["tokens"][:2] == [7, 3]
    assert 0.5 < soft["student_at_1"][1] / soft["teacher_at_1"][1] < 2  # the teacher's second choice, learned
    hard = labs.distillation_lab_numbers(logits, 7, 2.0, 0.0)
    assert hard["student_at_1"][0] > 0.95 and hard["student_at_1"][1] < 0.01 < hard["teacher_at_1"][1]
    entropies = list(soft["entropy_by_t"].values())
    assert entropies == sorted(entropies) and entropies[0] < entropies[-1]
    assert "entropy" in labs.distillation_lab_text(soft, ["a", "b", "c", "d", "e", "f"])


def _reference_setup() -> str:
    from conftest import reference_solution

    return reference_solution("09_distillation", "distill_setup")


@pytest.mark.parametrize("change,named", [
    (("max_steps=32", "max_steps=48"), "max_steps must be at most 32"),
    (('training_data = "teacher answers, labels where known"', 'training_data = "the teacher"'),
     "training_data must be one of"),
    (("temperature = 1.0", "temperature = 0.0"), "temperature must be a number in [0.5, 10]"),
    (("alpha = 0.0", "alpha = -1"), "alpha must be a number in [0, 1]"),
    (("seed=SEED,", "seed=SEED, gradient_accumulation_steps=8,"), "gradient_accumulation_steps = 8: this exercise keeps"),
    (("sft_config = SFTConfig(", "sft_config = dict("), "this exercise keeps it at"),
    (("**STUDENT_ARGS)", "**STUDENT_ARGS)\nsft_config = 3"), "must be a SFTConfig"),
    (("alpha = 0.0", "del alpha"), "alpha"),
])
def test_exercise_9_2_refuses_what_it_would_not_train_before_training(change, named, learner_runtime, tmp_path):
    """Part of the tamper suite for 9.2: choices over the step budget, outside the loss's ranges, or that the grader
    would not train as the learner's run trained, fail with the field named, before any training (in a child)."""
    from conftest import grade_outcome_cell

    old, new = change
    reference = _reference_setup()
    assert old in reference
    verdict = grade_outcome_cell("distill_final_outcome", "distill_setup", reference.replace(old, new), tmp_path)
    assert not verdict.passed and named in verdict.message, verdict
    assert not (tmp_path / "student").exists()  # refused before any training


def test_exercise_9_2_trains_the_grader_own_student_whatever_the_cell_does(learner_runtime, tmp_path):
    """The cell can only choose: one that forges a student, a training record and the package's evaluator in its own
    process is graded on what the grader trains from its choices (here 1 step on the labels: no skill)."""
    from conftest import grade_outcome_cell

    forged = _reference_setup().replace("max_steps=32", "max_steps=1").replace(
        '"teacher answers, labels where known"', '"labels"') + (
        "\nimport json, pathlib\nfrom ftcourse import evaluation\nimport ftcourse.grading.evaluate as e\n"
        "e.evaluate_distillation = lambda *a, **k: None\nevaluation.exact_match = lambda *a, **k: (1.0, [])\n"
        "folder = pathlib.Path('artifacts/09_distillation')\nfolder.mkdir(parents=True, exist_ok=True)\n"
        "(folder / 'training.json').write_text(json.dumps({'steps': 1, 'losses': [0.0]}))\n")
    verdict = grade_outcome_cell("distill_final_outcome", "distill_setup", forged, tmp_path)
    assert not verdict.passed and verdict.metrics["steps"] == 1 and verdict.metrics["gain_over_labels_only"] < 0.1, verdict
    assert len(verdict.metrics["train_losses"]) == 1 and verdict.metrics["params_share"] < 0.8
