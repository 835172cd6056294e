"""Quantization helpers and the Quantization Lab: code books, round trips, bitsandbytes agreement, the NF4 check."""

import pytest
import torch

from ftcourse import labs, quantization
from ftcourse.grading import check_in_kernel
from ftcourse.presets import get_preset

from conftest import solution_cell


def test_normal_float_code_is_bitsandbytes_nf4():
    assert torch.allclose(quantization.normal_float_code(4), quantization.bnb_nf4_code(), atol=1e-6)
    code = quantization.normal_float_code(3)
    assert len(code) == 8 and float(code.min()) == -1 and float(code.max()) == 1 and 0.0 in code.tolist()


def test_nf_round_trip_matches_bitsandbytes_and_beats_int4():
    torch.manual_seed(0)
    w = torch.randn(96, 70) * 0.02  # the last block is partial
    _, _, bnb_weight = quantization.bnb_nf4_round_trip(w)
    assert torch.allclose(quantization.quantize_dequantize(w, 4, 64, "nf"), bnb_weight, atol=1e-7)
    nf = quantization.rmse(w, bnb_weight)
    assert nf < quantization.rmse(w, quantization.quantize_dequantize(w, 4, 64, "int"))


def test_error_falls_with_bits_and_small_blocks():
    torch.manual_seed(0)
    w = torch.randn(128, 128) * 0.02
    w[3, 5] = 1.0
    errors = [quantization.rmse(w, quantization.quantize_dequantize(w, b, 64, "int")) for b in (2, 3, 4, 8)]
    assert errors == sorted(errors, reverse=True)
    assert quantization.rmse(w, quantization.quantize_dequantize(w, 4, 64)) < \
        quantization.rmse(w, quantization.quantize_dequantize(w, 4, None))
    assert quantization.quantize_dequantize(w, 16).dtype == torch.float32
    with pytest.raises(ValueError, match="scheme"):
        quantization.quantize_dequantize(w, 4, 64, "fp")


def test_bits_per_weight_counts_scales():
    assert quantization.bits_per_weight(4, 64, 10_000) == 4.5
    assert quantization.bits_per_weight(4, 64, 10_000, double_quant=True) == pytest.approx(4 + 8 / 64 + 32 / (64 * 256))
    assert quantization.bits_per_weight(16, 64, 10) == 16


def test_model_weights_are_restored(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    before = model.model.layers[0].mlp.up_proj.weight.detach().clone()
    rows = quantization.perplexity_grid(model, tokenizer, "The cat sat on the mat. " * 20, [(4, 64, "nf"), (2, 64, "int")])
    assert torch.equal(model.model.layers[0].mlp.up_proj.weight, before)
    assert rows[1]["perplexity"] > rows[0]["perplexity"]  # 2-bit int is much worse than NF4


@pytest.fixture(scope="module")
def reference_nf4():
    ns = solution_cell("05_quantization_qlora", "nf4_functions")
    return ns["nf4_quantize"], ns["nf4_dequantize"]


def check_nf4(quantize, dequantize):
    return check_in_kernel("nf4_tests", get_preset("cpu"), {"nf4_quantize": quantize, "nf4_dequantize": dequantize})


def test_reference_nf4_matches_bitsandbytes(reference_nf4):
    verdict = check_nf4(*reference_nf4)
    assert verdict.passed and verdict.metrics["index_agreement"] >= 0.999


def test_nf4_without_partial_block_fails_with_counts(reference_nf4):
    quantize, dequantize = reference_nf4

    def truncating(weight, code, block_size=64):
        idx, absmax = quantize(weight, code, block_size)
        full = weight.numel() // block_size
        return idx[:full * block_size], absmax[:full]

    with pytest.raises(AssertionError, match="last one partial"):
        check_nf4(truncating, dequantize)


def test_nf4_rounding_down_fails_on_indices(reference_nf4):
    quantize, dequantize = reference_nf4

    def floor_levels(weight, code, block_size=64):
        idx, absmax = quantize(weight, code, block_size)
        flat = weight.reshape(-1)
        pad = (-flat.numel()) % block_size
        blocks = torch.cat([flat, flat.new_zeros(pad)]).reshape(-1, block_size) / absmax[:, None]
        below = (torch.bucketize(blocks, code, right=True) - 1).clamp(0, 15)  # the level below, not the nearest
        return below.reshape(-1)[:flat.numel()].to(torch.uint8), absmax

    with pytest.raises(AssertionError, match="of indices equal bitsandbytes'"):
        check_nf4(floor_levels, dequantize)


def test_quantization_lab_numbers_and_figure():
    import matplotlib

    matplotlib.use("Agg")
    torch.manual_seed(0)
    w = torch.randn(64, 256) * 0.02
    four, two = (labs.quantization_lab_numbers(w, b, 64, "nf") for b in (4, 2))
    assert two["relative_rmse"] > four["relative_rmse"] and four["bits_per_weight"] == 4.5
    assert four["matrix_kb"] == pytest.approx(w.numel() * 4.5 / 8 / 1e3)
    rows = [labs.quantization_lab_numbers(w, b, 64, s) for s in ("nf", "int") for b in (8, 4, 2)]
    ppl = [{"bits": b, "block": 64, "scheme": s, "perplexity": 10.0 * (9 - b)} for s in ("nf", "int") for b in (8, 4, 2)]
    fig = labs.quantization_lab_figure(rows, ppl, 9.0, marker=(4,))
    assert len(fig.axes) == 2
    assert "4.500 bits per weight" in labs.quantization_lab_text(four, 12.0, 11.0)


def test_quantization_lab_widget_controls_and_measure_button(model_and_tokenizer):
    """Every control changes the readout or the figure; the button measures the model's perplexity live."""
    import matplotlib

    from ftcourse.quantization import perplexity_grid

    matplotlib.use("Agg")
    model, tokenizer = model_and_tokenizer
    weight = model.model.layers[0].mlp.down_proj.weight.detach()
    text = "The course measures what it teaches. " * 6
    rows = [labs.quantization_lab_numbers(weight, b, 64, s) for s in ("nf", "int") for b in (8, 4, 2)]
    grid = perplexity_grid(model, tokenizer, text, [(4, 64, "nf"), (4, None, "nf")])
    base = perplexity_grid(model, tokenizer, text, [(16, None, "nf")])[0]["perplexity"]
    whole_matrix = labs.quantization_lab_figure(rows, grid, base)
    assert all(len(line.get_xdata()) == 1 for line in whole_matrix.axes[1].lines if line.get_label() == "nf")  # block 64 only
    box = labs.quantization_lab_widget(weight, model, tokenizer, text, rows, grid, base)
    (bits, block), (scheme, measure) = box.children[0].children, box.children[1].children
    readout, shown_error, image = box.children[2:]
    seen = [(readout.value, image.value)]
    for control, value in ((bits, 2), (block, 0), (scheme, "int")):
        control.value = value
        assert readout.value != seen[-1][0], f"{control.description} left the readout unchanged"
        assert image.value != seen[-1][1], f"{control.description} left the figure unchanged"
        seen.append((readout.value, image.value))
    assert block.label == "whole matrix" and "block tensor" in readout.value
    measure.click()
    assert shown_error.value == "", shown_error.value
    assert "model perplexity on the course text" in readout.value and image.value != seen[-1][1]
    assert measure.description == "measure perplexity" and not measure.disabled
    expected = perplexity_grid(model, tokenizer, text, [(2, None, "int")])[0]["perplexity"]
    assert f"{min(expected, 1e30):.2f}" in readout.value
