import json
from pathlib import Path

import pytest

from ftcourse import presets
from ftcourse.presets import cpu_bf16_autocast, cpu_supports_bf16, get_preset


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


def _cpuinfo(tmp_path: Path, flags: str) -> Path:
    path = tmp_path / "cpuinfo"
    path.write_text(f"model name\t: Test CPU\nflags\t: fpu sse {flags}\n")
    return path


def test_bf16_autocast_only_where_measured_faster(tmp_path: Path, monkeypatch):
    """bf16 instructions are necessary, not sufficient: the CPU preset takes bf16 autocast only where it was
    measured >= 1.15x faster than float32; the measurement is cached, so every later process agrees."""
    monkeypatch.delenv(presets.CPU_BF16_ENV, raising=False)
    calls = []
    monkeypatch.setattr(presets, "measure_cpu_bf16_speedup", lambda: calls.append(1) or 0.65)
    assert not cpu_bf16_autocast(_cpuinfo(tmp_path, "avx2"), tmp_path)  # no bf16 instructions: not measured
    assert calls == []
    with_bf16 = _cpuinfo(tmp_path, "avx512f avx512_bf16")
    assert not cpu_bf16_autocast(with_bf16, tmp_path) and calls == [1]  # slower (this workplace's Xeon): float32
    assert json.loads((tmp_path / presets.CPU_BF16_FILE).read_text())["bf16"] is False
    monkeypatch.setattr(presets, "measure_cpu_bf16_speedup", lambda: calls.append(1) or 2.0)
    assert not cpu_bf16_autocast(with_bf16, tmp_path) and calls == [1]  # the cached decision, not a new one
    (tmp_path / presets.CPU_BF16_FILE).unlink()
    assert cpu_bf16_autocast(with_bf16, tmp_path) and calls == [1, 1]  # measured 2x faster: bf16
    monkeypatch.setenv(presets.CPU_BF16_ENV, "0")  # the grader passes its decision to its children
    assert not cpu_bf16_autocast(with_bf16, tmp_path)
    monkeypatch.setenv(presets.CPU_BF16_ENV, "yes")
    with pytest.raises(ValueError, match="must be '1'"):
        cpu_bf16_autocast(with_bf16, tmp_path)


def test_the_calibration_times_both_modes():
    assert presets.time_fwd_bwd(False, reps=1) > 0 and presets.time_fwd_bwd(True, reps=1) > 0


@pytest.mark.parametrize("bf16", ["0", "1"])
def test_the_cpu_preset_shares_prompts_on_both_its_paths(monkeypatch, bf16):
    """The CPU preset runs each prompt once on its float32 path and under bf16 autocast alike (see
    `Preset.share_prompt_forward`), and the GPU presets keep TRL's forwards."""
    monkeypatch.setenv(presets.CPU_BF16_ENV, bf16)
    cpu = get_preset("cpu")
    assert cpu.bf16 == (bf16 == "1") and cpu.share_prompt_forward
    assert not get_preset("t4").share_prompt_forward and not get_preset("a100").share_prompt_forward
