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


def test_the_distillation_trainer_at_alpha_0_is_the_sft_loss_and_at_alpha_1_is_zero_against_itself(teacher, tmp_path):
    """The first step's loss (before any update): alpha 0 equals the course's SFT trainer on the same batch; a student
    that is the whole teacher has zero soft loss."""
    from ftcourse.models import load_tokenizer
    from ftcourse.presets import get_preset
    from ftcourse.tasks import date_task_splits
    from ftcourse.training import SFTSetup, completion_only_trainer, sft_config, to_prompt_completion

    preset = get_preset("cpu")
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
