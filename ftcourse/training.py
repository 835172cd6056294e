"""Training with TRL's SFTTrainer and PEFT LoRA, configured from a preset.

Configuration flows one way: preset -> `SFTSetup` (what a learner chooses) -> TRL/PEFT configs ->
trainer. `train_sft` returns a `TrainResult` with the loss curve and measured throughput.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from pathlib import Path

from .presets import Preset
from .tasks import Example

LAYOUTS = ("padded", "grouped", "packed")


@dataclasses.dataclass
class SFTSetup:
    """The choices of a supervised fine-tune: method, sizes and the batch layout."""

    method: str = "lora"  # "lora" or "full"
    max_steps: int = 20
    learning_rate: float = 1e-3
    batch_size: int = 8
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    target_modules: Sequence[str] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    layout: str = "padded"  # "padded" | "grouped" | "packed"
    pack_length: int | None = None  # tokens per packed row; None = batch_size * preset.max_length // 2
    max_length: int | None = None  # longest row in tokens (longer examples are cut); None = preset.max_length
    warmup_steps: int = 2
    weight_decay: float = 0.0
    num_epochs: float | None = None  # when set, train for epochs instead of max_steps
    prompt_format: str = "chat"  # "chat" (the model's template) or "plain" (notebook 02's wrong-template demo)
    seed: int = 0

    def validate(self, step_budget: int | None = None) -> None:
        """Raise a clear error for a choice the trainer would reject later, or one over the budget."""
        if self.method not in ("lora", "full"):
            raise ValueError(f"SFTSetup.method must be 'lora' or 'full', got {self.method!r}.")
        if self.layout not in LAYOUTS:
            raise ValueError(f"SFTSetup.layout must be one of {LAYOUTS}, got {self.layout!r}.")
        if self.max_steps < 1 or self.batch_size < 1:
            raise ValueError(f"max_steps and batch_size must be >= 1, got {self.max_steps} and {self.batch_size}.")
        if not 0 < self.learning_rate < 1:
            raise ValueError(f"learning_rate must be in (0, 1), got {self.learning_rate}.")
        if step_budget is not None and self.num_epochs is None and self.max_steps > step_budget:
            raise ValueError(f"max_steps={self.max_steps} is over this exercise's step budget of {step_budget}.")


@dataclasses.dataclass
class TrainResult:
    """What a training run measured."""

    losses: list[float]  # training loss at each logged step
    steps: int
    seconds: float  # wall time of training, first step excluded from the throughput
    real_tokens: int  # non-padding tokens seen after the first step
    slot_tokens: int  # tokens including padding after the first step
    step_seconds: list[float]

    @property
    def real_tokens_per_s(self) -> float:
        return self.real_tokens / max(sum(self.step_seconds[1:]), 1e-9)

    @property
    def padding_fraction(self) -> float:
        return 1 - self.real_tokens / max(self.slot_tokens, 1)


def to_prompt_completion(examples: Sequence[Example], prompt_format: str = "chat"):
    """A `datasets.Dataset` in TRL's prompt-completion format (completion-only loss).

    "chat": conversational, rendered by the model's chat template; "plain": `PLAIN_TEMPLATE` text, which
    TRL trains as plain language modelling of the completion (it appends the EOS token).
    """
    from datasets import Dataset

    from .evaluation import PLAIN_TEMPLATE

    if prompt_format == "plain":
        return Dataset.from_list([{"prompt": PLAIN_TEMPLATE.format(e.prompt), "completion": " " + e.answer} for e in examples])
    if prompt_format != "chat":
        raise ValueError(f"prompt_format must be 'chat' or 'plain', got {prompt_format!r}.")
    return Dataset.from_list([
        {"prompt": [{"role": "user", "content": e.prompt}], "completion": [{"role": "assistant", "content": e.answer}]}
        for e in examples
    ])


class _CountingCollator:
    """Wraps TRL's collator to count real and padded token slots of every batch it builds."""

    def __init__(self, inner):
        self.inner = inner
        self.real: list[int] = []
        self.slots: list[int] = []

    def __call__(self, features):
        batch = self.inner(features)
        ids = batch["input_ids"]
        mask = batch.get("attention_mask")
        self.real.append(int(mask.sum()) if mask is not None else int(ids.numel()))
        self.slots.append(int(ids.numel()))
        return batch


def lora_config(setup: SFTSetup):
    """PEFT's LoraConfig for a causal LM from the setup."""
    from peft import LoraConfig

    return LoraConfig(r=setup.lora_r, lora_alpha=setup.lora_alpha, lora_dropout=setup.lora_dropout,
                      target_modules=list(setup.target_modules), task_type="CAUSAL_LM")


def sft_config(setup: SFTSetup, preset: Preset, output_dir: str | Path):
    """TRL's SFTConfig from a setup and a preset; CPU-friendly defaults made explicit."""
    from trl import SFTConfig

    packed = setup.layout == "packed"
    return SFTConfig(
        output_dir=str(output_dir),
        max_steps=-1 if setup.num_epochs else setup.max_steps,
        num_train_epochs=setup.num_epochs or 1,
        per_device_train_batch_size=1 if packed else setup.batch_size,
        learning_rate=setup.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=setup.warmup_steps,
        weight_decay=setup.weight_decay,
        max_length=(setup.pack_length or setup.batch_size * preset.max_length // 2) if packed else (setup.max_length or preset.max_length),
        packing=packed,
        # "grouped" data arrives already ordered in length buckets (see `length_grouped_order`)
        train_sampling_strategy="sequential" if setup.layout == "grouped" else "random",
        bf16=preset.bf16,
        fp16=preset.fp16,
        use_cpu=preset.device == "cpu",
        gradient_checkpointing=False,  # +45 % time on CPU and no memory pressure at this size
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=setup.seed,
        data_seed=setup.seed,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )


def completion_only_trainer():
    """`SFTTrainer` with its loss computed on the completion positions only: the CPU preset's trainer.

    TRL 1.16's SFTTrainer scores every position of a row through its fused LM head and computes the entropy
    and the token accuracy over the vocabulary at each one, for its logs; on a CPU (no Triton kernels) it
    cannot skip the positions without a label. This subclass runs the backbone, then the LM head on the
    labeled positions alone: the same loss (mean negative log-likelihood of the completion tokens, over the
    number of such tokens TRL passes as `num_items_in_batch`), with the LM head's work cut to the share of
    tokens that carry a label. Token accuracy is logged on those positions; entropy is not.
    """
    import torch
    import torch.nn.functional as F
    from trl import SFTTrainer

    class CompletionOnlySFTTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            base = model.get_base_model() if hasattr(model, "get_base_model") else model
            labels = inputs["labels"][:, 1:]
            mask = labels != -100
            backbone_inputs = {k: inputs[k] for k in ("input_ids", "attention_mask", "position_ids") if k in inputs}
            with self.accelerator.autocast():
                hidden = getattr(base, base.base_model_prefix)(**backbone_inputs, use_cache=False).last_hidden_state
                logits = base.get_output_embeddings()(hidden[:, :-1][mask])
            targets = labels[mask]
            count = mask.sum() if num_items_in_batch is None else num_items_in_batch
            loss = F.cross_entropy(logits.float(), targets, reduction="sum") / torch.as_tensor(count).clamp(min=1)
            mode = "train" if self.model.training else "eval"
            with torch.no_grad():
                accuracy = (logits.argmax(-1) == targets).float().mean().item() if targets.numel() else 0.0
            self._metrics[mode]["mean_token_accuracy"].append(accuracy)
            if return_outputs:
                raise ValueError("CompletionOnlySFTTrainer computes no full logits; use SFTTrainer for compute_metrics.")
            return loss

    return CompletionOnlySFTTrainer


def trainer_class(preset: Preset):
    """The trainer a preset trains with: TRL's `SFTTrainer`, or on a CPU its completion-only-loss subclass."""
    from trl import SFTTrainer

    return completion_only_trainer() if preset.lm_head_on_labels_only else SFTTrainer


def train_sft(model, tokenizer, train_examples: Sequence[Example], setup: SFTSetup, preset: Preset,
              output_dir: str | Path, progress: bool = True):
    """Fine-tune `model` in place with SFTTrainer (+ LoRA when setup.method == 'lora').

    Returns (trained model, TrainResult). With LoRA the returned model is a PeftModel.
    """
    import torch
    from transformers import TrainerCallback

    setup.validate()
    torch.manual_seed(setup.seed)
    if setup.layout == "grouped":
        train_examples = length_grouped_order(tokenizer, train_examples, setup.batch_size, setup.seed)
    dataset = to_prompt_completion(train_examples, setup.prompt_format)
    step_ends: list[float] = []
    losses: list[float] = []

    class _Progress(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            step_ends.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kw):
            step_ends.append(time.perf_counter())

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))
                if progress:
                    total = state.max_steps
                    print(f"\r  step {state.global_step:>3}/{total}  loss {logs['loss']:.4f}", end="", flush=True)

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    trainer = trainer_class(preset)(
        model=model,
        args=sft_config(setup, preset, output_dir),
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora_config(setup) if setup.method == "lora" else None,
        callbacks=[_Progress()],
    )
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # our progress line replaces its dict dumps
    counter = _CountingCollator(trainer.data_collator)
    trainer.data_collator = counter
    model.config.use_cache = False  # packed rows stay apart only without a KV cache
    trainer.train()
    if progress:
        print()
    step_seconds = [b - a for a, b in zip(step_ends, step_ends[1:])]
    from accelerate.utils import extract_model_from_parallel

    # accelerate wraps forward() in autocast for bf16/fp16 training; unwrap it so the returned model computes
    # in its own dtype and callers choose autocast explicitly (a saved-and-reloaded adapter has no wrapper)
    trained = extract_model_from_parallel(trainer.model, keep_fp32_wrapper=False)
    trained.eval()
    result = TrainResult(losses=losses, steps=len(step_seconds), seconds=sum(step_seconds),
                         real_tokens=sum(counter.real[1:]), slot_tokens=sum(counter.slots[1:]),
                         step_seconds=step_seconds)
    return trained, result


def save_sft_artifacts(model, tokenizer, result: TrainResult, setup: SFTSetup, artifacts: str | Path) -> Path:
    """Save what the grader evaluates: the adapter (with tokenizer) and a record of the training run."""
    import json

    if setup.method != "lora":
        raise ValueError("The graded exercise saves a LoRA adapter; set SFTSetup.method = 'lora'.")
    artifacts = Path(artifacts)
    adapter = artifacts / "adapter"
    adapter.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(adapter)
    tokenizer.save_pretrained(adapter)
    record = {"steps": result.steps, "setup": dataclasses.asdict(setup), "final_loss": result.losses[-1] if result.losses else None,
              "losses": result.losses, "seconds": result.seconds}
    (artifacts / "training.json").write_text(json.dumps(record, indent=2, default=list))
    return adapter


def length_grouped_order(tokenizer, examples: Sequence[Example], batch_size: int, seed: int) -> list[Example]:
    """Examples reordered so each batch holds similar lengths; the order of the batches is shuffled.

    Sorting by length and cutting into batches removes most padding; shuffling whole batches keeps the
    optimizer from seeing all the short examples first.
    """
    import random

    lengths = chat_lengths(tokenizer, examples)
    by_length = sorted(range(len(examples)), key=lambda i: (lengths[i], i))
    batches = [by_length[i:i + batch_size] for i in range(0, len(by_length), batch_size)]
    random.Random(seed).shuffle(batches)
    return [examples[i] for batch in batches for i in batch]


def chat_lengths(tokenizer, examples: Sequence[Example]) -> list[int]:
    """Token count of each example rendered with the chat template (prompt + answer)."""
    return [len(tokenizer.apply_chat_template(e.messages(), tokenize=True)["input_ids"]) for e in examples]


def layout_run_setup(tokenizer, examples: Sequence[Example], setup: SFTSetup, layout: str) -> SFTSetup:
    """`setup` for one epoch in `layout`; packed rows hold `batch_size` examples' worth of tokens."""
    mean_len = sum(chat_lengths(tokenizer, examples)) / len(examples)
    return dataclasses.replace(setup, layout=layout, num_epochs=1, pack_length=int(round(setup.batch_size * mean_len)))


def compare_layouts(tokenizer, examples: Sequence[Example], preset: Preset, setup: SFTSetup,
                    model_name: str = "embedded", output_dir: str | Path = "build/layouts") -> list[dict]:
    """Train the same LoRA fine-tune three ways (padded, length-grouped, packed) for one epoch each.

    Each run starts from a fresh copy of the base model and sees the same examples. Packed rows hold
    `batch_size` examples' worth of tokens, so a step does the same real work in every layout.
    Returns one row per layout: real tokens/s, padding fraction, the bound 1/(1 - padding) and losses.
    """
    from .models import load_model

    rows = []
    for layout in LAYOUTS:
        run = layout_run_setup(tokenizer, examples, setup, layout)
        print(f"layout={layout}")
        _, result = train_sft(load_model(model_name, preset.device, seed=setup.seed), tokenizer, examples, run,
                              preset, Path(output_dir) / layout)
        rows.append({"layout": layout, "steps": result.steps, "real_tokens_per_s": result.real_tokens_per_s,
                     "padding_fraction": result.padding_fraction,
                     "seconds_per_step": sum(result.step_seconds[1:]) / max(len(result.step_seconds) - 1, 1),
                     "losses": result.losses})
    padded = rows[0]
    for row in rows:
        row["speedup_vs_padded"] = row["real_tokens_per_s"] / padded["real_tokens_per_s"]
        row["bound_vs_padded"] = 1 / (1 - padded["padding_fraction"]) if row["layout"] != "padded" else 1.0
    return rows


def recommend_layout(rows: list[dict]) -> str:
    """The layout with the most real tokens per second in this run."""
    return max(rows, key=lambda r: r["real_tokens_per_s"])["layout"]


def packed_vs_separate_loss(model, tokenizer, examples: Sequence[Example], reset_positions: bool = True) -> tuple[float, float]:
    """Mean token loss of `examples` packed into one row vs each in its own row.

    The packed row restarts `position_ids` at every example and passes no attention mask, which is how
    transformers recognises packed sequences and keeps them from attending to each other (KV cache off).
    With `reset_positions=False` the row is one long causal sequence: examples see their predecessors.
    """
    import torch

    seqs = [torch.tensor(tokenizer.apply_chat_template(e.messages(), tokenize=True)["input_ids"]) for e in examples]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        total, count = 0.0, 0
        for ids in seqs:
            out = model(input_ids=ids[None], labels=ids[None], use_cache=False)
            total += out.loss.item() * (len(ids) - 1)
            count += len(ids) - 1
        separate = total / count
        row = torch.cat(seqs)[None]
        labels = row.clone()
        start = 0
        for ids in seqs[:-1]:  # the first token of the next example is not predicted from this one
            start += len(ids)
            labels[0, start] = -100
        if reset_positions:
            positions = torch.cat([torch.arange(len(ids)) for ids in seqs])[None]
        else:
            positions = torch.arange(row.shape[1])[None]
        packed = model(input_ids=row, position_ids=positions, labels=labels, use_cache=False).loss.item()
    model.train(was_training)
    return packed, separate
