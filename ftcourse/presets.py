"""Presets: one value moves a notebook from a 2-core CPU to a GPU.

Every size, step count, batch and dtype a notebook uses comes from a `Preset`. A notebook sets
`PRESET = "auto"` in its papermill `parameters` cell and passes its preset explicitly to everything it
calls, the grader included. Under autograde the grader reads the submission's `PRESET`; an instructor's
`$FTCOURSE_PRESET` wins there (`ftcourse.grading.preprocessor.choose_preset`), and nowhere else.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

PRESET_NAMES = ("auto", "cpu", "t4", "a100")


@dataclasses.dataclass(frozen=True)
class Preset:
    """The sizes, step counts and dtypes of one hardware target."""

    name: str
    device: str  # "cpu" or "cuda"
    model: str  # "embedded" or a Hub id (falls back to the embedded model when offline)
    bf16: bool  # train under bf16 autocast
    fp16: bool  # train under fp16 autocast (GPUs without bf16)
    n_train: int  # training examples generated for a task
    n_eval: int  # public validation / held-out examples
    batch_size: int
    step_budget: int  # most optimizer steps a graded fine-tune may take
    lora_r: int
    learning_rate: float
    max_length: int
    efficiency_examples: int  # examples per run in the padded/grouped/packed comparison
    eval_batch_size: int
    memory_budget_gb: float  # counted training memory a planned fine-tune may use (notebook 01's exercise)
    # the loss's LM head runs on the labeled (completion) positions only, not TRL's fused head over every position
    # (on a CPU TRL cannot skip unlabeled positions; on a GPU its Triton kernels do: see ftcourse.training)
    lm_head_on_labels_only: bool = False
    # GRPO and RLOO sample and score groups of replies to one prompt, DPO pairs, and an SFT batch's rows start with the
    # same system turn and instruction: the model runs each distinct prompt (or the common prefix) once and shares
    # its cache with the rest of the rows, instead of once per row (ftcourse.training.shared_prompt_*). The same
    # numbers to float32 rounding (~4e-7 of the hidden states); under bf16 autocast the shorter pass rounds
    # differently, which moves a run's samples and so its later numbers, as a change of seed would: the CPU preset
    # shares on both paths since the bf16 path was measured with it (README, "runs each prompt once").
    share_prompt_forward: bool = False
    num_threads: int | None = None  # torch threads; None keeps torch's default

    @property
    def autocast_dtype(self) -> str | None:
        """The dtype name autocast computes in, or None in fp32."""
        return "bfloat16" if self.bf16 else "float16" if self.fp16 else None

    @property
    def qlora_step_budget(self) -> int:
        """Most optimizer steps of notebook 05's graded QLoRA fine-tune: a third of `step_budget`, since a step
        through a 4-bit base costs more than a LoRA step (each matmul dequantizes its weights; 05 measures it)."""
        return self.step_budget // 3

    @property
    def dpo_step_budget(self) -> int:
        """Most optimizer steps of notebook 07's graded DPO fine-tune: two thirds of `step_budget`, since a DPO step
        runs two replies per pair through the policy and again, adapter off, through the reference."""
        return self.step_budget * 2 // 3

    @property
    def grpo_step_budget(self) -> int:
        """Most optimizer steps of notebook 08's graded GRPO fine-tune: two thirds of `step_budget`, since a GRPO step
        also samples its group of replies (generation is most of a CPU step)."""
        return self.step_budget * 2 // 3

    @property
    def compute_dtype(self) -> str:
        """What a 4-bit (QLoRA) base computes in on this preset: its autocast dtype, else float32."""
        return self.autocast_dtype or "float32"

    def autocast(self):
        """The autocast context the preset trains and evaluates under (a no-op in fp32)."""
        import contextlib

        import torch

        if self.bf16:
            return torch.autocast(self.device, dtype=torch.bfloat16)
        if self.fp16:
            return torch.autocast(self.device, dtype=torch.float16)
        return contextlib.nullcontext()

    def describe(self) -> str:
        """One line a learner can read: what this preset will do."""
        dtype = "bf16 autocast" if self.bf16 else "fp16 autocast" if self.fp16 else "fp32"
        return (
            f"preset={self.name} device={self.device} model={self.model} {dtype} "
            f"batch={self.batch_size} step_budget={self.step_budget} n_train={self.n_train} n_eval={self.n_eval}"
        )


def cpu_supports_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """True when the CPU has bf16 instructions (AVX512-BF16 or AMX-BF16): bf16 autocast *may* be faster there."""
    try:
        flags = cpuinfo.read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


CPU_BF16_ENV = "FTCOURSE_CPU_BF16"  # "1" or "0": the CPU preset's autocast, decided (the grader passes its own on)
CPU_BF16_FILE = "cpu_autocast.json"  # the measured decision, in the model cache
CPU_BF16_MIN_SPEEDUP = 1.15  # bf16 autocast must be this much faster than float32 to be chosen


def time_fwd_bwd(bf16: bool, reps: int = 5) -> float:
    """Median seconds of a forward and backward of a small MLP stack shaped like the course model's, 768 rows."""
    import statistics
    import time

    import torch

    torch.manual_seed(0)
    layers = torch.nn.Sequential(*[m for _ in range(2) for m in (torch.nn.Linear(576, 1536), torch.nn.SiLU(),
                                                                 torch.nn.Linear(1536, 576), torch.nn.LayerNorm(576))])
    x = torch.randn(768, 576)
    times = []
    for _ in range(reps + 1):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = layers(x).float().square().mean()
        loss.backward()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])  # the first run warms the kernels up


def measure_cpu_bf16_speedup(rounds: int = 5) -> float:
    """float32 time over bf16-autocast time of `time_fwd_bwd`, the median of `rounds` alternating rounds.

    The median, not the best round: the decision is cached for every later run, so one lucky round on a busy
    machine must not decide it. (Measured: the 2-core Xeon whose quiet speedup is 0.65 read 1.16 as the best of
    three rounds while another training job ran, and the course then trained under bf16 autocast.)"""
    import statistics

    return statistics.median(time_fwd_bwd(False) / time_fwd_bwd(True) for _ in range(rounds))


def cpu_bf16_autocast(cpuinfo: Path = Path("/proc/cpuinfo"), cache: Path | None = None) -> bool:
    """Whether the CPU preset trains and evaluates under bf16 autocast on this machine.

    Only where the CPU has bf16 instructions **and** bf16 autocast was measured at least 1.15x faster than
    float32 on a training-shaped forward and backward. The instructions alone are not enough: on a 2-core
    Intel Xeon with avx512_bf16 and no AMX, a LoRA step of the course model took 4.5 s under bf16 autocast and
    3.0 s in float32 (README, benchmark). Decided once per machine: `$FTCOURSE_CPU_BF16` ("1"/"0") if set, else
    the decision cached in `$FTCOURSE_CACHE/cpu_autocast.json` (written by `make setup`), else measured now
    (about 2 s) and cached, so every process of a run (notebook kernel, grader) makes the same choice.
    """
    import json
    import os
    import platform

    forced = os.environ.get(CPU_BF16_ENV, "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    if forced:
        raise ValueError(f"${CPU_BF16_ENV} must be '1' (bf16 autocast) or '0' (float32), got {forced!r}.")
    if not cpu_supports_bf16(cpuinfo):
        return False
    if cache is None:
        from .models import cache_root

        cache = cache_root()
    path = Path(cache) / CPU_BF16_FILE
    names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")]
    machine = f"{names[0] if names else platform.machine()} x {os.cpu_count()}"  # the decision is this CPU's
    try:
        record = json.loads(path.read_text())
        if record.get("machine") == machine and isinstance(record.get("bf16"), bool):
            return record["bf16"]
    except (OSError, ValueError):
        pass
    speedup = measure_cpu_bf16_speedup()
    record = {"machine": machine, "speedup": round(speedup, 3), "bf16": speedup >= CPU_BF16_MIN_SPEEDUP}
    try:  # whole or not at all: another process may be reading it
        partial = path.with_name(f"{path.name}.{os.getpid()}")
        partial.write_text(json.dumps(record))
        os.replace(partial, path)
    except OSError:  # a read-only cache (the learner's, under grading): the grader passes its decision on instead
        pass
    return record["bf16"]


def _cpu() -> Preset:
    bf16 = cpu_bf16_autocast()
    return Preset(
        name="cpu", device="cpu", model="embedded", bf16=bf16, fp16=False,
        n_train=400, n_eval=64, batch_size=8, step_budget=24, lora_r=16, learning_rate=1e-3,
        max_length=128, efficiency_examples=24, eval_batch_size=64, memory_budget_gb=1.5, lm_head_on_labels_only=True,
        share_prompt_forward=True,
    )


def _t4() -> Preset:
    return Preset(
        name="t4", device="cuda", model="HuggingFaceTB/SmolLM2-360M-Instruct", bf16=False, fp16=True,
        n_train=2000, n_eval=256, batch_size=16, step_budget=60, lora_r=16, learning_rate=5e-4,
        max_length=256, efficiency_examples=256, eval_batch_size=64, memory_budget_gb=6.0,
    )


def _a100() -> Preset:
    return Preset(
        name="a100", device="cuda", model="HuggingFaceTB/SmolLM2-1.7B-Instruct", bf16=True, fp16=False,
        n_train=4000, n_eval=512, batch_size=32, step_budget=60, lora_r=32, learning_rate=3e-4,
        max_length=256, efficiency_examples=512, eval_batch_size=128, memory_budget_gb=24.0,
    )


def auto_preset_name() -> str:
    """Pick a preset from the hardware: a GPU of compute capability >= 8 is an a100, other GPUs a t4."""
    try:
        import torch

        if torch.cuda.is_available():
            major, _ = torch.cuda.get_device_capability(0)
            return "a100" if major >= 8 else "t4"
    except Exception:  # torch missing or a broken driver: the CPU preset still works
        pass
    return "cpu"


def get_preset(name: str = "auto") -> Preset:
    """The preset called `name`; "auto" picks one from the hardware."""
    chosen = str(name).strip().lower()
    if chosen not in PRESET_NAMES:
        raise ValueError(f"Unknown preset {name!r}; expected one of {', '.join(PRESET_NAMES)}.")
    if chosen == "auto":
        chosen = auto_preset_name()
    return {"cpu": _cpu, "t4": _t4, "a100": _a100}[chosen]()
