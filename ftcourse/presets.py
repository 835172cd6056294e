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
    """True when the CPU has bf16 instructions (AVX512-BF16 or AMX-BF16), where autocast is faster."""
    try:
        flags = cpuinfo.read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _cpu() -> Preset:
    return Preset(
        name="cpu", device="cpu", model="embedded", bf16=cpu_supports_bf16(), fp16=False,
        n_train=400, n_eval=64, batch_size=8, step_budget=24, lora_r=16, learning_rate=1e-3,
        max_length=128, efficiency_examples=40, eval_batch_size=64, memory_budget_gb=1.5, lm_head_on_labels_only=True,
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
