from pathlib import Path

import pytest

from ftcourse.presets import cpu_supports_bf16, get_preset


def test_the_named_preset_is_the_one_returned(monkeypatch):
    """No environment variable changes a notebook's preset: it travels explicitly (the grader reads it)."""
    monkeypatch.setenv("FTCOURSE_PRESET", "a100")
    assert get_preset("cpu").name == "cpu"


def test_auto_on_a_machine_without_gpu_is_cpu():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert get_preset("auto").name == "cpu"


def test_unknown_preset_names_the_choices():
    with pytest.raises(ValueError, match="expected one of auto, cpu, t4, a100"):
        get_preset("tpu")


def test_bf16_detection_reads_cpu_flags(tmp_path: Path):
    with_bf16 = tmp_path / "with"
    with_bf16.write_text("flags\t: fpu sse avx512f avx512_bf16\n")
    without = tmp_path / "without"
    without.write_text("flags\t: fpu sse avx2\n")
    assert cpu_supports_bf16(with_bf16) and not cpu_supports_bf16(without)
    assert not cpu_supports_bf16(tmp_path / "missing")


def test_gpu_presets_choose_dtype_by_capability():
    t4, a100 = get_preset("t4"), get_preset("a100")
    assert t4.fp16 and not t4.bf16  # compute capability 7.5: no bf16
    assert a100.bf16 and not a100.fp16
    assert all(p.step_budget >= 1 and p.n_eval >= 1 for p in (t4, a100, get_preset("cpu")))
