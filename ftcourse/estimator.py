"""Memory and compute of a fine-tune, estimated before it runs and measured when it does.

Training memory has four parts:

    parameters        every weight, in its storage dtype (4-bit NF4 weights take half a byte + scales)
    gradients         one per *trainable* parameter, in its dtype
    optimizer states  AdamW keeps two (first and second moment) per trainable parameter
    activations       the tensors autograd saves in the forward pass for the backward pass

The first three follow from parameter counts. Activations grow with batch x sequence length, and which
tensors autograd saves depends on the method (frozen weights need no saved inputs), on autocast (it
saves low-precision copies of inputs and weights) and on the attention kernel. `SAVED_PER_LAYER` lists,
per decoder layer and per token, what a Llama-style decoder in transformers saves; the counts were read
off `measure_training_memory` (which counts every saved tensor, see below) and are checked against it
on other shapes, ranks and architectures by the tests.

Measurement (`measure_training_memory`) is deterministic: it counts bytes of tensors, not the process's
resident memory. Parameters and buffers (4-bit quantisation state included), gradients after
`backward()`, optimizer states after `step()`, and every tensor autograd saves during the forward pass,
recorded by `torch.autograd.graph.saved_tensors_hooks` and deduplicated by storage. The process's own
measurement is `measure_peak_rss` (resident memory sampled over one step in a fresh process; on a GPU also
the CUDA allocator's peak, `torch.cuda.max_memory_allocated`), which notebook 01 sets beside the count.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

METHODS = ("full", "lora", "qlora")
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
GB = 1e9


@dataclasses.dataclass(frozen=True)
class ModelShape:
    """The sizes of a Llama-style decoder that memory and FLOPs depend on."""

    name: str
    n_layers: int
    hidden: int
    intermediate: int
    n_heads: int
    n_kv_heads: int
    vocab: int
    tied_embeddings: bool
    head_dim: int | None = None  # None: hidden // n_heads

    @property
    def d_head(self) -> int:
        return self.head_dim or self.hidden // self.n_heads

    def module_shapes(self) -> dict[str, tuple[int, int]]:
        """(in_features, out_features) of each linear layer in one decoder layer."""
        q, kv = self.n_heads * self.d_head, self.n_kv_heads * self.d_head
        h, i = self.hidden, self.intermediate
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    @property
    def linear_params_per_layer(self) -> int:
        return sum(a * b for a, b in self.module_shapes().values())

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden

    @property
    def n_params(self) -> int:
        """All parameters: embeddings, decoder layers (linears + two norms), final norm, LM head if untied."""
        layers = self.n_layers * (self.linear_params_per_layer + 2 * self.hidden)
        head = 0 if self.tied_embeddings else self.embedding_params
        return self.embedding_params + layers + self.hidden + head

    @classmethod
    def from_config(cls, config, name: str | None = None) -> "ModelShape":
        """Read the shape from a transformers config (LlamaConfig and its relatives)."""
        return cls(name=name or getattr(config, "name_or_path", "") or config.model_type,
                   n_layers=config.num_hidden_layers, hidden=config.hidden_size,
                   intermediate=config.intermediate_size, n_heads=config.num_attention_heads,
                   n_kv_heads=getattr(config, "num_key_value_heads", None) or config.num_attention_heads,
                   vocab=config.vocab_size, tied_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
                   head_dim=getattr(config, "head_dim", None))


# Shapes of models a learner may plan for, so the estimator works offline (values from their configs).
KNOWN_SHAPES = {
    "smollm2-135m": ModelShape("SmolLM2-135M", 30, 576, 1536, 9, 3, 49152, True),
    "smollm2-360m": ModelShape("SmolLM2-360M", 32, 960, 2560, 15, 5, 49152, True),
    "smollm2-1.7b": ModelShape("SmolLM2-1.7B", 24, 2048, 8192, 32, 32, 49152, True),
    "llama-2-7b": ModelShape("Llama-2-7B", 32, 4096, 11008, 32, 32, 32000, False),
    "mistral-7b": ModelShape("Mistral-7B", 32, 4096, 14336, 32, 8, 32768, False),
    "llama-3.1-8b": ModelShape("Llama-3.1-8B", 32, 4096, 14336, 32, 8, 128256, False),
}


def known_shape(name: str) -> ModelShape:
    """A shape from `KNOWN_SHAPES` by its short name."""
    try:
        return KNOWN_SHAPES[name.lower()]
    except KeyError:
        raise KeyError(f"Unknown model {name!r}; known: {', '.join(KNOWN_SHAPES)}. "
                       "For another model use ModelShape.from_config(AutoConfig.from_pretrained(...)).") from None


@dataclasses.dataclass(frozen=True)
class TrainingPlan:
    """What a fine-tune will do, as far as memory and compute are concerned."""

    method: str = "lora"  # "full" | "lora" | "qlora"
    batch_size: int = 8
    seq_len: int = 128  # tokens per row (padded length)
    weight_dtype: str = "float32"  # storage dtype of the (non-quantised) weights
    autocast_dtype: str | None = None  # "bfloat16" | "float16" | None (compute in weight_dtype)
    lora_r: int = 16
    lora_targets: tuple[str, ...] = ALL_LINEAR
    gradient_checkpointing: bool = False
    attention_mask: bool = True  # padded batches pass a mask; packed rows do not
    quant_block: int = 64  # NF4 block size (weights per absmax scale)
    double_quant: bool = False
    # Full fine-tunes with 16-bit weights: False = pure 16-bit (16-bit gradients and AdamW states: 8 bytes per
    # parameter in all); True = the usual mixed precision (16-bit weights and gradients, plus a float32 master
    # copy of the weights and float32 AdamW states in the optimizer: 2 + 2 + 12 = 16 bytes per parameter)
    master_weights: bool = False

    def validate(self) -> None:
        """Raise an error that names the field for a plan the estimator cannot describe."""
        if self.method not in METHODS:
            raise ValueError(f"TrainingPlan.method must be one of {METHODS}, got {self.method!r}.")
        if self.weight_dtype not in DTYPE_BYTES:
            raise ValueError(f"TrainingPlan.weight_dtype must be one of {tuple(DTYPE_BYTES)}, got {self.weight_dtype!r}.")
        if self.autocast_dtype not in (None, "bfloat16", "float16"):
            raise ValueError(f"TrainingPlan.autocast_dtype must be None, 'bfloat16' or 'float16', got {self.autocast_dtype!r}.")
        if self.batch_size < 1 or self.seq_len < 1:
            raise ValueError(f"batch_size and seq_len must be >= 1, got {self.batch_size} and {self.seq_len}.")
        if self.method != "full":
            if self.lora_r < 1:
                raise ValueError(f"TrainingPlan.lora_r must be >= 1, got {self.lora_r}.")
            unknown = set(self.lora_targets) - set(ALL_LINEAR)
            if unknown or not self.lora_targets:
                raise ValueError(f"TrainingPlan.lora_targets must be a non-empty subset of {ALL_LINEAR}, got {self.lora_targets}.")

    def validate_trainable(self) -> None:
        """`validate`, and the fields the course's training run does not follow keep their defaults.

        Notebook 01's exercise trains a plan with `SFTTrainer` as the course does (float32 weights under the
        preset's autocast, no gradient checkpointing, padded batches), so a plan that changes any other field
        would be measured as one run and trained as another.
        """
        self.validate()
        default = TrainingPlan()
        for field in dataclasses.fields(self):
            if field.name not in TRAINED_FIELDS and getattr(self, field.name) != getattr(default, field.name):
                raise ValueError(f"TrainingPlan.{field.name}={getattr(self, field.name)!r}: the run this plan trains "
                                 f"keeps it at {getattr(default, field.name)!r}, so the plan must too (choose "
                                 f"{', '.join(TRAINED_FIELDS)}).")

    @property
    def tokens(self) -> int:
        return self.batch_size * self.seq_len

    @classmethod
    def from_data(cls, raw: dict) -> "TrainingPlan":
        """The plan of its JSON form (`dataclasses.asdict` through JSON): lists back to tuples, absent fields at
        their defaults."""
        return cls(**{key: tuple(value) if isinstance(value, list) else value for key, value in raw.items()})


# the plan's fields that the course's training run follows (`grading.produce`, notebook 01's exercise)
TRAINED_FIELDS = ("method", "batch_size", "seq_len", "autocast_dtype", "lora_r", "lora_targets")


@dataclasses.dataclass
class MemoryBreakdown:
    """Bytes of each part of training memory."""

    parameters: int
    gradients: int
    optimizer_states: int
    activations: int

    @property
    def total(self) -> int:
        return self.parameters + self.gradients + self.optimizer_states + self.activations

    def as_gb(self) -> dict[str, float]:
        parts = dataclasses.asdict(self) | {"total": self.total}
        return {k: v / GB for k, v in parts.items()}

    def __str__(self) -> str:
        return "  ".join(f"{k} {v:.2f} GB" for k, v in self.as_gb().items())


def lora_param_count(shape: ModelShape, r: int, targets: Sequence[str] = ALL_LINEAR) -> int:
    """Parameters of LoRA adapters: r x (in + out) for every targeted linear of every layer."""
    modules = shape.module_shapes()
    return shape.n_layers * sum(r * (modules[t][0] + modules[t][1]) for t in targets)


def trainable_param_count(shape: ModelShape, plan: TrainingPlan) -> int:
    """What the optimizer updates: everything for a full fine-tune, the adapters otherwise."""
    return shape.n_params if plan.method == "full" else lora_param_count(shape, plan.lora_r, plan.lora_targets)


def parameter_bytes(shape: ModelShape, plan: TrainingPlan) -> int:
    """Bytes of all weights; QLoRA stores the decoder's linear weights as 4-bit NF4 codes plus scales."""
    w = DTYPE_BYTES[plan.weight_dtype]
    adapters = 0 if plan.method == "full" else lora_param_count(shape, plan.lora_r, plan.lora_targets) * 4
    if plan.method != "qlora":
        return shape.n_params * w + adapters
    quantized = shape.n_layers * shape.linear_params_per_layer
    blocks = quantized / plan.quant_block
    # one fp32 absmax per block; double quantisation stores it as one byte plus an fp32 per 256 blocks
    scales = blocks * (1 + 4 / 256) if plan.double_quant else blocks * 4
    return int((shape.n_params - quantized) * w + quantized / 2 + scales + adapters)


# What autograd saves in one decoder layer, per token: (tensor width, how many, dtype).
# Width names: h hidden, i intermediate, q query heads x head dim, kv key/value heads x head dim,
# r LoRA rank (one per targeted module), heads (attention's log-sum-exp), 1 (the RMSNorm's rsqrt).
# dtype "c" is the compute dtype (the autocast dtype, else the weight dtype); "f32" stays float32
# because RMSNorm and the loss compute in float32.
# Counted with `measure_training_memory` on SmolLM2-135M (transformers 5.23, SDPA attention).
SAVED_PER_LAYER = {
    # (method kind, autocast?) -> list of (width, count, dtype)
    ("full", False): [("h", 4, "f32"), ("h", 2, "c"), ("i", 4, "c"), ("q", 2, "c"), ("kv", 2, "c"),
                      ("heads", 1, "f32"), ("1", 2, "f32")],
    ("adapter", False): [("h", 2, "f32"), ("h", 2, "c"), ("i", 4, "c"), ("q", 2, "c"), ("kv", 2, "c"),
                         ("r", 1, "c"), ("heads", 1, "f32"), ("1", 2, "f32")],
    ("full", True): [("h", 4, "f32"), ("h", 5, "c"), ("i", 4, "c"), ("q", 2, "c"), ("kv", 2, "c"),
                     ("heads", 1, "f32"), ("1", 2, "f32")],
    ("adapter", True): [("h", 2, "f32"), ("h", 6, "c"), ("i", 4, "c"), ("q", 2, "c"), ("kv", 2, "c"),
                        ("r", 1, "c"), ("heads", 1, "f32"), ("1", 2, "f32")],
}


def _width(shape: ModelShape, plan: TrainingPlan, name: str) -> int:
    kv = shape.n_heads if plan.attention_mask else shape.n_kv_heads  # with a mask, K and V are expanded to every head
    return {"h": shape.hidden, "i": shape.intermediate, "q": shape.n_heads * shape.d_head,
            "kv": kv * shape.d_head, "r": plan.lora_r * len(plan.lora_targets), "heads": shape.n_heads, "1": 1}[name]


def compute_bytes(plan: TrainingPlan) -> int:
    """Bytes per element of the dtype matmuls run in."""
    return DTYPE_BYTES[plan.autocast_dtype or plan.weight_dtype]


def activation_bytes_per_layer(shape: ModelShape, plan: TrainingPlan) -> int:
    """Bytes autograd saves for one decoder layer over the whole batch."""
    kind = "full" if plan.method == "full" else "adapter"
    autocast = plan.autocast_dtype is not None
    c = compute_bytes(plan)
    per_token = sum(_width(shape, plan, w) * n * (4 if dt == "f32" else c)
                    for w, n, dt in SAVED_PER_LAYER[(kind, autocast)])
    if plan.method == "qlora" and autocast:
        # bitsandbytes returns the gate and up projections (and their product) in float32
        per_token += 3 * shape.intermediate * (4 - c)
    return plan.tokens * per_token


def activation_bytes(shape: ModelShape, plan: TrainingPlan) -> int:
    """Bytes of every tensor autograd saves: decoder layers, the float32 logits of the loss, weight copies."""
    plan.validate()
    c = compute_bytes(plan)
    per_layer = activation_bytes_per_layer(shape, plan)
    if plan.gradient_checkpointing:
        # only each layer's input is kept; one layer's activations are rebuilt at a time in backward
        layers = shape.n_layers * plan.tokens * shape.hidden * c + per_layer
    else:
        layers = shape.n_layers * per_layer
    logits = plan.tokens * shape.vocab * 4  # the loss upcasts logits to float32 and keeps log-softmax
    final = plan.tokens * (3 * shape.hidden * 4 + 4) if plan.method == "full" else 0
    copies = 0
    if plan.autocast_dtype is not None:
        # autocast casts each weight to the compute dtype once and keeps the copy for backward;
        # 4-bit weights are dequantised on the fly instead, but the (unquantised) LM head is copied
        decoder = 0 if plan.method == "qlora" else shape.n_layers * shape.linear_params_per_layer
        adapters = 0 if plan.method == "full" else lora_param_count(shape, plan.lora_r, plan.lora_targets)
        copies = (decoder + shape.embedding_params + adapters) * c
    return int(layers + logits + final + copies)


def estimate_memory(shape: ModelShape, plan: TrainingPlan, optimizer: str = "adamw") -> MemoryBreakdown:
    """Estimated bytes of parameters, gradients, optimizer states and saved activations for one step.

    Assumptions, stated: weights in `plan.weight_dtype` (QLoRA: NF4 codes + scales); a full fine-tune's
    gradients in the weight dtype and AdamW's two states in it too (pure 16-bit: 8 bytes per parameter
    with 16-bit weights), or with `master_weights` the usual mixed precision (16 bytes per parameter: the
    optimizer keeps a float32 master copy and float32 states); adapters in float32. No allocator overhead,
    no transient buffers, and the parts summed as if they all coexisted (notebook 01 sets a process's measured
    peak beside the count: above it for adapters, below the sum for a full fine-tune whose activations are
    freed before its optimizer states exist).
    """
    plan.validate()
    if optimizer not in ("adamw", "sgd"):
        raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {optimizer!r}.")
    trainable = trainable_param_count(shape, plan)
    grad_bytes = DTYPE_BYTES[plan.weight_dtype] if plan.method == "full" else 4  # adapters train in float32
    states = {"adamw": 2, "sgd": 0}[optimizer]
    state_bytes = trainable * grad_bytes * states
    if plan.method == "full" and plan.master_weights and grad_bytes < 4:  # mixed precision: fp32 master + states
        state_bytes = trainable * 4 * (states + 1)
    return MemoryBreakdown(parameters=parameter_bytes(shape, plan), gradients=trainable * grad_bytes,
                           optimizer_states=state_bytes, activations=activation_bytes(shape, plan))


# ---------------------------------------------------------------- compute

def training_flops(shape: ModelShape, plan: TrainingPlan) -> float:
    """Floating-point operations of one optimizer step.

    Forward: 2 FLOPs per weight per token for every matmul (decoder linears and LM head) plus attention,
    4 x seq_len x (heads x head dim) per token per layer. Backward: gradients with respect to activations
    cost the forward again; gradients of weights once more, but only for trainable weights. So a full
    fine-tune costs ~3x the forward, LoRA ~2x (its adapters add 3 x 2 x their parameters per token).
    """
    plan.validate()
    matmul_params = shape.n_layers * shape.linear_params_per_layer + shape.embedding_params
    attention = shape.n_layers * 4 * plan.seq_len * shape.n_heads * shape.d_head
    forward = plan.tokens * (2 * matmul_params + attention)
    if plan.method == "full":
        return 3 * forward
    adapters = lora_param_count(shape, plan.lora_r, plan.lora_targets)
    return 2 * forward + plan.tokens * 6 * adapters


def measure_matmul_flops(dtype: str = "float32", size: int = 1024, device: str = "cpu", repeats: int = 5) -> float:
    """Measured matmul throughput (FLOP/s) of this machine in `dtype`: the best of a few square products."""
    import time

    import torch

    torch_dtype = getattr(torch, dtype)
    a = torch.randn(size, size, device=device).to(torch_dtype)
    b = torch.randn(size, size, device=device).to(torch_dtype)
    best = math.inf
    for _ in range(repeats + 1):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best


def estimate_step_seconds(shape: ModelShape, plan: TrainingPlan, flops_per_s: float) -> float:
    """Seconds per optimizer step if every FLOP ran at the measured matmul throughput (a lower bound)."""
    if flops_per_s <= 0:
        raise ValueError(f"flops_per_s must be positive, got {flops_per_s}.")
    return training_flops(shape, plan) / flops_per_s


# ---------------------------------------------------------------- fitting on a device

def fits(estimate: MemoryBreakdown, device_gb: float, reserve_gb: float = 1.0) -> bool:
    """True when the estimate fits in `device_gb` with `reserve_gb` left for the CUDA context and fragments."""
    return estimate.total / GB <= device_gb - reserve_gb


# ---------------------------------------------------------------- measurement

def build_model_for_plan(plan: TrainingPlan, model_name: str = "embedded", device: str = "cpu", seed: int = 0):
    """The course model set up as the plan says: full (all trainable), LoRA, or QLoRA on 4-bit NF4 weights."""
    import torch

    from .models import load_model, load_quantized_model

    plan.validate()
    if plan.method == "qlora":
        model = load_quantized_model(model_name, compute_dtype=plan.autocast_dtype or plan.weight_dtype,
                                     quant_block=plan.quant_block, double_quant=plan.double_quant, seed=seed)
    else:
        model = load_model(model_name, device, seed=seed).to(getattr(torch, plan.weight_dtype))
    return prepare_for_plan(model, plan, seed=seed)


def prepare_for_plan(model, plan: TrainingPlan, seed: int = 0):
    """Add LoRA adapters (float32, whatever the base dtype) unless the plan is a full fine-tune."""
    import torch
    from peft import LoraConfig, get_peft_model

    model.config.use_cache = False
    if plan.method != "full":
        torch.manual_seed(seed)
        config = LoraConfig(r=plan.lora_r, lora_alpha=2 * plan.lora_r, target_modules=list(plan.lora_targets),
                            lora_dropout=0.0, task_type="CAUSAL_LM")
        model = get_peft_model(model, config)
        for p in model.parameters():
            if p.requires_grad:
                p.data = p.data.float()
    if plan.gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    return model.train()


def _storage_key(t) -> tuple[int, int]:
    storage = t.untyped_storage()
    return storage.data_ptr(), storage.nbytes()


def _state_tensors(model):
    """Parameters, buffers and the tensors of 4-bit quantisation states (absmax scales, code books)."""
    import torch

    for p in model.parameters():
        yield p
        quant_state = getattr(p, "quant_state", None)
        if quant_state is not None:
            for value in vars(quant_state).values():
                if isinstance(value, torch.Tensor):
                    yield value
                elif hasattr(value, "absmax"):  # the nested state of double quantisation
                    yield from (v for v in vars(value).values() if isinstance(v, torch.Tensor))
    yield from model.buffers()


def measure_training_memory(model, plan: TrainingPlan, seed: int = 0, optimizer: str = "adamw",
                            vocab_size: int | None = None) -> MemoryBreakdown:
    """Count the bytes of one real training step at the plan's batch shape (deterministic, not RSS).

    Runs forward (recording every tensor autograd saves), backward and one optimizer step on random
    token ids of shape batch_size x seq_len. When the plan pads, the last row ends in one pad position,
    as a padded batch does (an all-ones mask would be dropped and take the unpadded attention path).
    """
    import contextlib

    import torch

    plan.validate()
    if plan.master_weights and plan.method == "full" and plan.weight_dtype != "float32":
        raise ValueError("measure_training_memory runs a plain AdamW on the model's own weights; a mixed-precision "
                         "optimizer (master_weights=True) is estimated, not measured here.")
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    vocab = vocab_size or model.config.vocab_size
    ids = torch.randint(0, vocab, (plan.batch_size, plan.seq_len), generator=generator).to(device)
    mask = None
    if plan.attention_mask:
        mask = torch.ones_like(ids)
        mask[-1, -1] = 0
    param_storages = {_storage_key(t) for t in _state_tensors(model)}
    parameters = sum(nbytes for _, nbytes in param_storages)
    saved: dict[tuple[int, int], int] = {}

    def pack(t):
        key = _storage_key(t)
        if key not in param_storages:
            saved[key] = key[1]
        return t

    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = (torch.optim.AdamW(trainable, lr=1e-5) if optimizer == "adamw" else torch.optim.SGD(trainable, lr=1e-5))
    autocast = (torch.autocast(device.type, dtype=getattr(torch, plan.autocast_dtype)) if plan.autocast_dtype
                else contextlib.nullcontext())
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast:
        loss = model(input_ids=ids, attention_mask=mask, labels=ids).loss
    loss.backward()
    gradients = sum(p.grad.numel() * p.grad.element_size() for p in trainable if p.grad is not None)
    opt.step()
    states = sum(v.numel() * v.element_size() for s in opt.state.values() for v in s.values()
                 if isinstance(v, torch.Tensor) and v.dim() > 0)  # the scalar step counters are not memory that matters
    opt.zero_grad(set_to_none=True)
    return MemoryBreakdown(parameters=parameters, gradients=gradients, optimizer_states=states,
                           activations=sum(saved.values()))


def measure_cuda_peak_bytes(model, plan: TrainingPlan, seed: int = 0) -> int:
    """The CUDA allocator's peak over one training step (GPU only): the other check of the estimate."""
    import torch

    torch.cuda.reset_peak_memory_stats()
    measure_training_memory(model, plan, seed=seed)
    return torch.cuda.max_memory_allocated()


def _resident_bytes() -> int:
    """This process's resident memory now (Linux /proc; elsewhere the peak so far, from getrusage)."""
    import os
    import resource
    import sys

    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


def _resident_file_bytes() -> int:
    """The part of resident memory backed by files (memory-mapped weights, libraries); 0 where unknown."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("RssFile:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _peak_rss_child(request: str) -> None:
    """In a fresh process: resident memory before the model, after building it, and its peak over one step."""
    import json
    import threading
    import time

    import torch  # imported before the baseline, as the parent process has its libraries loaded
    import transformers  # noqa: F401

    args = json.loads(request)
    plan = TrainingPlan.from_data(args["plan"])
    baseline, baseline_file = _resident_bytes(), _resident_file_bytes()
    model = build_model_for_plan(plan, args["model"], args["device"], seed=args["seed"])
    built, built_file = _resident_bytes(), _resident_file_bytes()
    peak, running = [built], [True]

    def sample() -> None:
        while running[0]:
            peak[0] = max(peak[0], _resident_bytes())
            time.sleep(0.0005)

    cuda = args["device"].startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    measure_training_memory(model, plan, seed=args["seed"])
    running[0] = False
    sampler.join()
    peak[0] = max(peak[0], _resident_bytes())
    report = {"baseline": baseline, "model_built": built - baseline, "model_built_file": built_file - baseline_file,
              "step_peak": peak[0] - baseline}
    if cuda:  # on a GPU the tensors live in the CUDA allocator: what it reserved is what must fit
        report["cuda_peak"] = torch.cuda.max_memory_reserved()
        report["cuda_allocated_peak"] = torch.cuda.max_memory_allocated()
    print("PEAK-RSS " + json.dumps(report))


def measure_peak_rss(plan: TrainingPlan, model_name: str = "embedded", device: str = "cpu", seed: int = 0) -> dict:
    """The process's measured memory for one training step, in a fresh Python process so that nothing else
    is in it: bytes above the baseline (Python, torch and transformers imported) after the model is built
    (`model_built`, of which `model_built_file` is file-backed: memory-mapped weights count only once read)
    and at the peak of one step (`step_peak`, sampled every half millisecond), and on a GPU what the CUDA
    allocator reserved at its peak (`cuda_peak`) and the tensors' own peak (`cuda_allocated_peak`). Set it next
    to `measure_training_memory`'s count: the difference is the allocator's overhead, transient buffers
    and what the libraries keep."""
    import json
    import subprocess
    import sys

    request = json.dumps({"plan": dataclasses.asdict(plan), "model": model_name, "device": device, "seed": seed})
    done = subprocess.run([sys.executable, "-c", f"from ftcourse.estimator import _peak_rss_child; _peak_rss_child({request!r})"],
                          capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("PEAK-RSS ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"measure_peak_rss: the measuring process failed (exit {done.returncode}): {done.stderr[-600:]}")
    return json.loads(lines[-1][len("PEAK-RSS "):])


def compare_estimate(shape: ModelShape, plan: TrainingPlan, measured: MemoryBreakdown) -> list[dict]:
    """Rows of estimate vs measured per part, with the relative error."""
    estimate = estimate_memory(shape, plan)
    rows = []
    for part in ("parameters", "gradients", "optimizer_states", "activations", "total"):
        est, got = getattr(estimate, part), getattr(measured, part)
        rows.append({"method": plan.method, "part": part, "estimate_gb": est / GB, "measured_gb": got / GB,
                     "error": (est - got) / got if got else 0.0})
    return rows


def save_plan(path, plan: TrainingPlan, estimate: MemoryBreakdown, **record) -> None:
    """Write the plan, its estimate and anything else measured (steps, step seconds) as JSON."""
    import json
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"plan": dataclasses.asdict(plan),
               "estimate": dataclasses.asdict(estimate) | {"total": estimate.total}, **record}
    path.write_text(json.dumps(payload, indent=2, default=list))


def load_plan(path) -> tuple[TrainingPlan, dict]:
    """Read what `save_plan` wrote; errors name the field that is missing or wrong."""
    import json
    from pathlib import Path

    record = json.loads(Path(path).read_text())
    for field in ("plan", "estimate"):
        if field not in record:
            raise ValueError(f"{path}: missing the field {field!r}; write the file with ftcourse.estimator.save_plan.")
    if not isinstance(record["plan"], dict):
        raise ValueError(f"{path}: the plan must be an object of TrainingPlan's fields, got {type(record['plan']).__name__}.")
    try:
        plan = TrainingPlan.from_data(record["plan"])
    except TypeError as exc:
        raise ValueError(f"{path}: the plan has a field TrainingPlan does not know ({exc}).") from None
    plan.validate()
    if "total" not in record["estimate"]:
        raise ValueError(f"{path}: the estimate has no 'total'.")
    return plan, record
