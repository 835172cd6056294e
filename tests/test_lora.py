"""The from-scratch LoRA layer against PEFT, weight-update spectra, and the LoRA Lab's numbers."""

import math

import pytest
import torch
from torch import nn

from ftcourse import labs, lora
from ftcourse.estimator import ALL_LINEAR, known_shape, lora_param_count
from ftcourse.grading import check_in_kernel
from ftcourse.presets import get_preset

from conftest import solution_cell


@pytest.fixture(scope="module")
def reference_layer():
    return solution_cell("04_lora", "lora_layer")["LoRALinear"]


def check_lora_layer(layer_cls):
    return check_in_kernel("lora_layer_tests", get_preset("cpu"), {"LoRALinear": layer_cls})


def test_reference_layer_matches_peft(reference_layer):
    verdict = check_lora_layer(reference_layer)
    assert verdict.passed and verdict.metrics["max_difference"] <= 1e-5


def _variant(reference_layer, **overrides):
    class Variant(reference_layer):
        def __init__(self, base, r, alpha):
            super().__init__(base, r, alpha)
            if "scale" in overrides:
                self.scale = overrides["scale"](alpha, r)
            if overrides.get("unfreeze"):
                for p in self.base.parameters():
                    p.requires_grad_(True)
    return Variant


def test_wrong_scale_fails_with_the_difference(reference_layer):
    with pytest.raises(AssertionError, match="output differs from PEFT"):
        check_lora_layer(_variant(reference_layer, scale=lambda alpha, r: alpha))  # forgot to divide by r


def test_unfrozen_base_fails(reference_layer):
    with pytest.raises(AssertionError, match="base layer's parameters must be frozen"):
        check_lora_layer(_variant(reference_layer, unfreeze=True))


def test_transposed_shapes_fail_with_the_expected_shapes():
    class Transposed(nn.Module):
        def __init__(self, base, r, alpha):
            super().__init__()
            self.base = base
            self.lora_A = nn.Parameter(torch.zeros(base.in_features, r))
            self.lora_B = nn.Parameter(torch.zeros(r, base.out_features))

    with pytest.raises(AssertionError, match=r"lora_A must have shape \(64, 48\)|lora_A must have shape"):
        check_lora_layer(Transposed)


def test_low_rank_error_is_eckart_young():
    torch.manual_seed(0)
    delta = torch.randn(40, 5) @ torch.randn(5, 30) + 0.01 * torch.randn(40, 30)
    s = lora.spectrum(delta)
    errors = lora.low_rank_error(s)
    u, sv, vh = torch.linalg.svd(delta.double())
    for k in (0, 1, 5, 12, 30):
        approx = (u[:, :k] * sv[:k]) @ vh[:k]
        direct = float((delta.double() - approx).norm() / delta.double().norm())
        assert math.isclose(float(errors[k]), direct, rel_tol=1e-4, abs_tol=1e-6)
    assert lora.effective_rank(s, 0.9) <= 5  # a rank-5 matrix plus noise


def test_delta_weights_equal_scaled_product():
    from peft import LoraConfig, get_peft_model

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.q_proj = nn.Linear(12, 8)

        def forward(self, x):
            return self.q_proj(x)

    torch.manual_seed(0)
    model = get_peft_model(Tiny(), LoraConfig(r=2, lora_alpha=6, target_modules=["q_proj"]))
    layer = model.base_model.model.q_proj
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_()
    delta = lora.delta_weights(model, ["q_proj"])["q_proj"]
    expected = 3.0 * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
    assert torch.allclose(delta, expected.detach(), atol=1e-6)
    with pytest.raises(KeyError, match="not a LoRA module"):
        lora.delta_weights(model, ["k_proj"])


def test_lora_lab_numbers_follow_the_formula_and_the_estimator():
    shape = known_shape("smollm2-135m")
    n = labs.lora_lab_numbers(shape, 8, 16, ("q_proj", "v_proj"), 8, 96, "bfloat16", lambda k: 0.5)
    assert n["trainable"] == lora_param_count(shape, 8, ("q_proj", "v_proj"))
    assert n["scale"] == 2 and n["full_update_error_at_r"] == 0.5
    assert n["lora_memory_gb"] < n["full_memory_gb"]
    bigger = labs.lora_lab_numbers(shape, 64, 16, ALL_LINEAR, 8, 96, "bfloat16")
    assert bigger["trainable"] > n["trainable"] and bigger["lora_memory_gb"] > n["lora_memory_gb"]
    with pytest.raises(ValueError, match="at least one target"):
        labs.lora_lab_numbers(shape, 8, 16, (), 8, 96, None)


def test_lora_lab_figure_and_widget_render():
    import matplotlib

    matplotlib.use("Agg")
    torch.manual_seed(0)
    spectra = {"LoRA r=4": lora.spectrum(torch.randn(20, 4) @ torch.randn(4, 20)), "full": lora.spectrum(torch.randn(20, 20))}
    errors = {k: lora.low_rank_error(v) for k, v in spectra.items()}
    fig = labs.lora_lab_figure(spectra, errors, r=4)
    assert len(fig.axes) == 2 and len(fig.axes[0].lines) == 3  # two spectra and the rank marker
    box = labs.lora_lab_widget(known_shape("smollm2-135m"), spectra, errors, "full", 8, 96, None, r=4, alpha=8)
    (rank, alpha), boxes, readout, shown_error, image = box.children[0].children, box.children[1].children, *box.children[2:]
    first_text, first_png = readout.value, image.value
    assert "trainable" in first_text.lower() and first_png[:4] == b"\x89PNG" and shown_error.value == ""
    seen = (first_text, first_png)
    for control, value in [(rank, 32), (alpha, 128)] + [(box, False) for box in boxes[:-1]]:
        control.value = value  # every control moves the readout and the figure (its memory panel and title)
        assert readout.value != seen[0] and image.value != seen[1], control.description
        seen = (readout.value, image.value)
    for checkbox in boxes:
        checkbox.value = False  # no target left: the lab says so instead of failing silently
    assert "at least one target" in readout.value and shown_error.value == ""


def test_lab_callback_errors_are_shown_not_swallowed():
    import ipywidgets as widgets

    shown = widgets.HTML()
    failing = labs._shown(lambda *_: 1 / 0, shown)
    assert failing() is None and "ZeroDivisionError" in shown.value and "ftcourse-lab-error" in shown.value
    labs._shown(lambda *_: 7, shown)()
    assert shown.value == ""  # cleared by the next call that succeeds


def test_peft_scaling_reads_alpha_over_r_and_rslora_alpha_over_sqrt_r():
    """The ablation's `scale` column is PEFT's own factor: alpha / r, or alpha / sqrt(r) with use_rslora."""
    from peft import LoraConfig, get_peft_model

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.q_proj = nn.Linear(8, 8)

    for rslora, expected in ((False, 16 / 64), (True, 16 / math.sqrt(64))):
        model = get_peft_model(Tiny(), LoraConfig(r=64, lora_alpha=16, target_modules=["q_proj"], use_rslora=rslora))
        assert lora.peft_scaling(model) == pytest.approx(expected)
    with pytest.raises(ValueError, match="no LoRA layer"):
        lora.peft_scaling(Tiny())


def test_ablation_runs_name_what_differs():
    assert lora.AblationRun(8, 16).label == "r=8, alpha=16"
    assert lora.AblationRun(64, 16, rslora=True).label == "r=64, alpha=16, rsLoRA"
    assert lora.AblationRun(8, 16, targets=lora.ATTENTION).label == "r=8, alpha=16, attention only"
    assert lora.AblationRun(8, 16, targets=lora.MLP).label == "r=8, alpha=16, MLP only"
    assert set(lora.ATTENTION + lora.MLP) == set(ALL_LINEAR)
