"""Weight quantization for notebook 05: blockwise absmax codes, normal-float code books, bitsandbytes' NF4.

`quantize_dequantize` is the Quantization Lab's one function: a weight tensor stored with `bits` bits
per weight in blocks of `block_size` (one float32 absmax scale per block), then read back. Scheme "int"
spaces the levels evenly (absmax int-k); scheme "nf" puts them at quantiles of a normal distribution
(NF4 at 4 bits, the same construction at other widths). Notebook 05 writes NF4 from scratch; its test
compares that with bitsandbytes (`bnb_nf4_round_trip`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .estimator import ALL_LINEAR  # the decoder's linear layers, as the estimator counts them

SCHEMES = ("int", "nf")
NF4_OFFSET = 0.9677083  # QLoRA's choice: the outermost quantile, (1 - 1/(2*15) + 1 - 1/(2*16)) / 2


def normal_float_code(bits: int = 4, offset: float = NF4_OFFSET) -> torch.Tensor:
    """The 2**bits levels of a normal-float code in [-1, 1], with an exact zero (QLoRA's construction).

    2**(bits-1) positive levels and 2**(bits-1) - 1 negative ones at evenly spaced quantiles of N(0, 1),
    plus 0, scaled so the largest is 1. At 4 bits this is bitsandbytes' NF4 table.
    """
    if bits < 2:
        raise ValueError(f"a normal-float code needs at least 2 bits, got {bits}.")
    normal = torch.distributions.Normal(0.0, 1.0)
    half = 2 ** (bits - 1)
    positive = normal.icdf(torch.linspace(offset, 0.5, half + 1, dtype=torch.float64)[:-1])
    negative = -normal.icdf(torch.linspace(offset, 0.5, half, dtype=torch.float64)[:-1])
    code = torch.cat([positive, torch.zeros(1, dtype=torch.float64), negative]).sort().values
    return (code / code.abs().max()).float()


def int_code(bits: int) -> torch.Tensor:
    """Symmetric absmax integer levels k / (2**(bits-1) - 1), k = -(2**(bits-1) - 1) .. 2**(bits-1) - 1."""
    if bits < 2:
        raise ValueError(f"an integer code needs at least 2 bits, got {bits}.")
    top = 2 ** (bits - 1) - 1
    return torch.arange(-top, top + 1, dtype=torch.float32) / top


def code_book(bits: int, scheme: str) -> torch.Tensor:
    """The levels of `scheme` at `bits` bits."""
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}.")
    return normal_float_code(bits) if scheme == "nf" else int_code(bits)


def quantize_dequantize(weight: torch.Tensor, bits: int, block_size: int | None = 64, scheme: str = "nf") -> torch.Tensor:
    """`weight` stored with `bits` bits per weight, blockwise absmax scaled, and read back (float32).

    bits 16 means a bfloat16 copy. `block_size=None` uses one scale for the whole tensor.
    """
    flat = weight.detach().float().reshape(-1)
    if bits >= 16:
        return flat.to(torch.bfloat16).float().reshape(weight.shape)
    block = block_size or flat.numel()
    pad = (-flat.numel()) % block
    blocks = torch.cat([flat, flat.new_zeros(pad)]).reshape(-1, block)
    absmax = blocks.abs().amax(dim=1, keepdim=True).clamp_min(1e-12)
    code = code_book(bits, scheme)
    normalised = blocks / absmax
    # nearest level: compare with the midpoints between sorted levels
    index = torch.bucketize(normalised, (code[1:] + code[:-1]) / 2)
    return (code[index] * absmax).reshape(-1)[:flat.numel()].reshape(weight.shape)


def bits_per_weight(bits: int, block_size: int | None, n_weights: int, double_quant: bool = False) -> float:
    """Storage per weight, scales included: bits + 32 / block (double quantisation: 8 / block + 32 / (256 block))."""
    if bits >= 16:
        return 16.0
    block = block_size or n_weights
    scales = (8 / block + 32 / (256 * block)) if double_quant else 32 / block
    return bits + scales


def rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).pow(2).mean().sqrt())


# ---------------------------------------------------------------- bitsandbytes, the reference

def bnb_nf4_round_trip(weight: torch.Tensor, block_size: int = 64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """bitsandbytes' NF4: (code indices 0..15 per weight, absmax per block, dequantised weight)."""
    import bitsandbytes.functional as F

    # Flattened first: bitsandbytes 0.50.2's CPU dequantize_4bit returns wrong values for some 2-D shapes
    # (e.g. 40 x 96, rows that straddle blocks) and right ones for the same weights as one row.
    flat = weight.detach().float().contiguous().reshape(-1)
    packed, state = F.quantize_4bit(flat, blocksize=block_size, quant_type="nf4")
    packed = packed.reshape(-1)
    indices = torch.stack([packed >> 4, packed & 0x0F], dim=1).reshape(-1)[:flat.numel()]  # high nibble first
    restored = F.dequantize_4bit(packed.reshape(-1, 1), state).float().reshape(weight.shape)
    return indices.to(torch.uint8), state.absmax.float(), restored


def bnb_nf4_code() -> torch.Tensor:
    """bitsandbytes' NF4 table."""
    import bitsandbytes.functional as F

    return F.get_4bit_type("nf4", device="cpu").float()


# ---------------------------------------------------------------- the whole model, quantized

@torch.no_grad()
def quantize_model_weights(model, bits: int, block_size: int | None = 64, scheme: str = "nf") -> dict:
    """Replace every decoder linear weight by its quantised-and-read-back copy, in place.

    Returns the originals so `restore_weights` can undo it (cheaper than reloading the model).
    """
    originals = {}
    for name, module in model.named_modules():
        if name.endswith(ALL_LINEAR) and hasattr(module, "weight"):
            originals[name] = module.weight.data.clone()
            module.weight.data = quantize_dequantize(module.weight.data, bits, block_size, scheme).to(module.weight.dtype)
    return originals


@torch.no_grad()
def restore_weights(model, originals: dict) -> None:
    """Put back the weights `quantize_model_weights` replaced."""
    modules = dict(model.named_modules())
    for name, weight in originals.items():
        modules[name].weight.data = weight


def perplexity_grid(model, tokenizer, text: str, settings: Sequence[tuple[int, int | None, str]]) -> list[dict]:
    """Perplexity of `text` with the model's linear weights quantised at each (bits, block, scheme)."""
    from .evaluation import perplexity

    n_weights = sum(m.weight.numel() for n, m in model.named_modules() if n.endswith(ALL_LINEAR))
    rows = []
    for bits, block, scheme in settings:
        originals = quantize_model_weights(model, bits, block, scheme)
        try:
            with torch.no_grad():
                ppl = perplexity(model, tokenizer, text)
        finally:
            restore_weights(model, originals)
        rows.append({"bits": bits, "block": block or "tensor", "scheme": scheme if bits < 16 else "bf16",
                     "bits_per_weight": bits_per_weight(bits, block, n_weights),
                     "linear_weights_mb": n_weights * bits_per_weight(bits, block, n_weights) / 8 / 1e6,
                     "perplexity": ppl if math.isfinite(ppl) else float("inf")})
    return rows
