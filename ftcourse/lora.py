"""LoRA, opened up: a reference PEFT layer to compare with, weight updates, their spectra, the rank ablation.

Notebook 04 writes a LoRA layer from scratch; `compare_lora_layer` holds it against PEFT's own layer
with the same weights. `delta_weights` / `full_delta_weights` read the update ΔW a fine-tune made, and
`spectrum` / `low_rank_error` say how much of it a rank-r update can hold (the LoRA Lab's figures).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import nn

from .estimator import ALL_LINEAR


class _Holder(nn.Module):
    """A module with one linear named `proj`, so PEFT can inject an adapter into it."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.proj = linear


def peft_lora_layer(base: nn.Linear, r: int, alpha: float, seed: int = 0):
    """PEFT's LoRA layer around a copy of `base` (dropout 0, default init: A Kaiming-uniform, B zero)."""
    import copy

    from peft import LoraConfig, inject_adapter_in_model

    torch.manual_seed(seed)
    holder = inject_adapter_in_model(LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=["proj"]),
                                     _Holder(copy.deepcopy(base)))
    return holder.proj


@dataclasses.dataclass
class LayerComparison:
    """Largest absolute differences between a from-scratch LoRA layer and PEFT's, same weights and input."""

    output: float
    grad_A: float
    grad_B: float
    grad_input: float
    trainable: int  # parameters the from-scratch layer trains
    expected_trainable: int  # r * (in + out)
    base_frozen: bool

    def ok(self, atol: float = 1e-5) -> bool:
        return (max(self.output, self.grad_A, self.grad_B, self.grad_input) <= atol
                and self.trainable == self.expected_trainable and self.base_frozen)

    def __str__(self) -> str:
        return (f"max |difference| vs PEFT: output {self.output:.1e}, dL/dA {self.grad_A:.1e}, dL/dB {self.grad_B:.1e}, "
                f"dL/dx {self.grad_input:.1e}; trainable {self.trainable:,} (r(in+out) = {self.expected_trainable:,}); "
                f"base weight frozen: {self.base_frozen}")


def compare_lora_layer(layer_cls, base: nn.Linear, r: int, alpha: float, seed: int = 0,
                       batch_shape: Sequence[int] = (2, 5)) -> LayerComparison:
    """Build `layer_cls(base, r, alpha)` and PEFT's layer, give both the same A and a non-zero B, compare.

    B starts at zero in both (so the adapter starts as the identity); a random B makes the comparison of
    outputs and gradients non-trivial.
    """
    mine = layer_cls(base, r, alpha)
    for name in ("lora_A", "lora_B"):
        if not isinstance(getattr(mine, name, None), nn.Parameter):
            raise AssertionError(f"The layer must have a trainable nn.Parameter `{name}`; found {type(getattr(mine, name, None)).__name__}.")
    want_a, want_b = (r, base.in_features), (base.out_features, r)
    if tuple(mine.lora_A.shape) != want_a or tuple(mine.lora_B.shape) != want_b:
        raise AssertionError(f"lora_A must have shape {want_a} and lora_B {want_b} (PEFT's convention); "
                             f"got {tuple(mine.lora_A.shape)} and {tuple(mine.lora_B.shape)}.")
    if float(mine.lora_B.detach().abs().max()) != 0.0:
        raise AssertionError("lora_B must start at zero, so the adapted layer starts equal to the base layer.")
    reference = peft_lora_layer(base, r, alpha, seed)
    generator = torch.Generator().manual_seed(seed + 1)
    a = torch.randn(want_a, generator=generator) / base.in_features ** 0.5
    b = torch.randn(want_b, generator=generator)
    with torch.no_grad():
        mine.lora_A.copy_(a)
        mine.lora_B.copy_(b)
        reference.lora_A["default"].weight.copy_(a)
        reference.lora_B["default"].weight.copy_(b)
    x = torch.randn(*batch_shape, base.in_features, generator=generator)
    outputs, grads = [], []
    for layer, params in ((mine, (mine.lora_A, mine.lora_B)),
                          (reference, (reference.lora_A["default"].weight, reference.lora_B["default"].weight))):
        xi = x.clone().requires_grad_(True)
        out = layer(xi)
        weights = torch.linspace(-1, 1, out.numel()).reshape(out.shape)  # a loss whose gradient is not uniform
        (out * weights).sum().backward()
        outputs.append(out.detach())
        grads.append((params[0].grad, params[1].grad, xi.grad))
    diff = lambda p, q: float((p - q).abs().max()) if p is not None and q is not None else float("inf")  # noqa: E731
    trainable = sum(p.numel() for p in mine.parameters() if p.requires_grad)
    base_params = [p for n, p in mine.named_parameters() if not n.startswith("lora_")]
    return LayerComparison(output=diff(outputs[0], outputs[1]), grad_A=diff(grads[0][0], grads[1][0]),
                           grad_B=diff(grads[0][1], grads[1][1]), grad_input=diff(grads[0][2], grads[1][2]),
                           trainable=trainable, expected_trainable=r * (base.in_features + base.out_features),
                           base_frozen=bool(base_params) and not any(p.requires_grad for p in base_params))


# ---------------------------------------------------------------- what a fine-tune changed

def delta_weights(peft_model, module_names: Sequence[str]) -> dict[str, torch.Tensor]:
    """ΔW = (alpha / r) B A of the named LoRA modules (names as in the base model, e.g. 'model.layers.14.self_attn.q_proj')."""
    out = {}
    modules = dict(peft_model.base_model.model.named_modules())
    for name in module_names:
        layer = modules.get(name)
        if layer is None or not hasattr(layer, "get_delta_weight"):
            raise KeyError(f"{name!r} is not a LoRA module of this model; adapted modules end in {sorted({n.rsplit('.', 1)[-1] for n, m in modules.items() if hasattr(m, 'get_delta_weight')})}.")
        out[name] = layer.get_delta_weight("default").detach().float().cpu()
    return out


def full_delta_weights(base_model, tuned_model, module_names: Sequence[str]) -> dict[str, torch.Tensor]:
    """W_tuned - W_base of the named linear layers of two plain (non-PEFT) models."""
    base, tuned = dict(base_model.named_modules()), dict(tuned_model.named_modules())
    return {n: (tuned[n].weight.detach().float() - base[n].weight.detach().float()).cpu() for n in module_names}


def spectrum(delta: torch.Tensor) -> torch.Tensor:
    """Singular values of ΔW, largest first."""
    return torch.linalg.svdvals(delta.double()).float()


def low_rank_error(singular_values: torch.Tensor) -> torch.Tensor:
    """Relative Frobenius error of the best rank-k approximation, for k = 0 .. len(s).

    By Eckart-Young, ||ΔW - ΔW_k||_F / ||ΔW||_F = sqrt(sum_{i>k} s_i^2 / sum_i s_i^2).
    """
    energy = singular_values.double() ** 2
    tail = torch.cat([energy.flip(0).cumsum(0).flip(0), torch.zeros(1, dtype=energy.dtype)])
    return (tail / energy.sum()).sqrt().float()


def effective_rank(singular_values: torch.Tensor, energy: float = 0.9) -> int:
    """The smallest k whose rank-k approximation keeps `energy` of ΔW's squared Frobenius norm."""
    share = (singular_values.double() ** 2).cumsum(0) / (singular_values.double() ** 2).sum()
    return int((share < energy).sum()) + 1


# ---------------------------------------------------------------- rank and alpha, measured

ATTENTION, MLP = ALL_LINEAR[:4], ALL_LINEAR[4:]  # q, k, v, o | gate, up, down


@dataclasses.dataclass(frozen=True)
class AblationRun:
    """One LoRA configuration of the ablation: rank, alpha, the scaling rule and the modules it adapts."""

    r: int
    alpha: float
    rslora: bool = False  # PEFT's use_rslora: scale alpha / sqrt(r) instead of alpha / r
    targets: tuple[str, ...] = ALL_LINEAR

    @property
    def target_group(self) -> str:
        """The adapted modules in words: "all linear", "attention only", "MLP only", or their names."""
        return {ALL_LINEAR: "all linear", ATTENTION: "attention only", MLP: "MLP only"}.get(self.targets, "+".join(self.targets))

    @property
    def label(self) -> str:
        where = "" if self.targets == ALL_LINEAR else f", {self.target_group}"
        return f"r={self.r}, alpha={self.alpha:g}{', rsLoRA' if self.rslora else ''}{where}"


def peft_scaling(model) -> float:
    """The factor PEFT multiplies B A by (alpha / r, or alpha / sqrt(r) with rsLoRA), read from the model."""
    for module in model.modules():
        scaling = getattr(module, "scaling", None)
        if isinstance(scaling, dict) and scaling:
            return float(next(iter(scaling.values())))
    raise ValueError("no LoRA layer found: peft_scaling reads a PeftModel with a LoRA adapter.")


def rank_ablation(runs: Sequence[AblationRun], train, validation, preset, tokenizer, max_steps: int, batch_size: int,
                  learning_rate: float, seed: int = 0, output_dir: str = "build/ablation", keep: int | None = None):
    """Train one LoRA per run from the same base weights and data; measure exact match and time.

    Returns (rows, kept model): `keep` names the rank whose trained model is returned (for its ΔW): the
    first run of that rank. Each row's `scale` is PEFT's own factor, read from the trained model.
    """
    from .evaluation import exact_match
    from .models import load_model
    from .training import SFTSetup, train_sft

    rows, kept = [], None
    for index, run in enumerate(runs):
        setup = SFTSetup(method="lora", max_steps=max_steps, learning_rate=learning_rate, batch_size=batch_size,
                         lora_r=run.r, lora_alpha=run.alpha, use_rslora=run.rslora, target_modules=run.targets, seed=seed)
        print(run.label)
        model, result = train_sft(load_model(preset.model, preset.device, seed=seed), tokenizer, train, setup, preset,
                                  f"{output_dir}/run{index}")
        with preset.autocast():
            em, _ = exact_match(model, tokenizer, validation, batch_size=preset.eval_batch_size)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        rows.append({"run": run.label, "r": run.r, "alpha": run.alpha, "rslora": run.rslora, "targets": run.targets,
                     "target_group": run.target_group, "scale": peft_scaling(model), "trainable": trainable,
                     "exact_match": em, "seconds_per_step": sum(result.step_seconds[1:]) / max(len(result.step_seconds) - 1, 1),
                     "losses": result.losses})
        if keep is not None and run.r == keep and kept is None:
            kept = model
    return rows, kept
