"""Knowledge distillation instruments for notebook 09: a student made by dropping layers of the
teacher, the distillation loss as the library computes it, and the trainer that trains a student on it.

The loss on the completion tokens, with temperature T and mixing weight alpha (Hinton et al. 2015):

    loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(student, labels)

T^2 keeps the soft term's gradients on the scale of the hard term's as T grows.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path


def parameter_count(model) -> int:
    """Every parameter of `model` (tied embeddings counted once)."""
    return sum(p.numel() for p in model.parameters())


def layer_pruned_student(teacher, keep: Sequence[int]):
    """A new causal LM of the teacher's architecture holding only the decoder layers `keep` (indices into the
    teacher's, in order), with the teacher's weights for them and for everything else (embeddings, final norm,
    head) and its generation settings. The teacher is left untouched."""
    from transformers import AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    layers = teacher.config.num_hidden_layers
    keep = list(keep)
    if not keep or keep != sorted(set(keep)) or not all(isinstance(i, int) and 0 <= i < layers for i in keep):
        raise ValueError(f"keep must list distinct layer indices in increasing order, each in 0..{layers - 1}; "
                         f"got {keep}.")
    config = copy.deepcopy(teacher.config)
    config.num_hidden_layers = len(keep)
    if getattr(config, "layer_types", None):
        config.layer_types = [config.layer_types[i] for i in keep]
    with no_init_weights():  # every weight is the teacher's, loaded below: a random draw first would be wasted time
        student = AutoModelForCausalLM.from_config(config)
    renamed = {}
    for name, tensor in teacher.state_dict().items():
        if name.startswith("model.layers."):
            index = int(name.split(".")[2])
            if index in keep:
                renamed[name.replace(f"model.layers.{index}.", f"model.layers.{keep.index(index)}.", 1)] = tensor
        else:
            renamed[name] = tensor
    student.load_state_dict(renamed, strict=True)
    student.tie_weights()  # needed: `no_init_weights` also skipped the tying that initialisation does
    student.generation_config = copy.deepcopy(teacher.generation_config)
    return student.to(next(teacher.parameters()).device).eval()


def distillation_loss(student_logits, teacher_logits, targets, temperature: float, alpha: float):
    """The loss above on rows of logits (one row per completion token), with PyTorch's `kl_div` (mean over rows)
    and `cross_entropy`: alpha 0 is plain fine-tuning on the labels, alpha 1 soft targets alone."""
    import torch.nn.functional as F

    if temperature <= 0 or not 0 <= alpha <= 1:
        raise ValueError(f"temperature must be > 0 and alpha in [0, 1]; got {temperature} and {alpha}.")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student and teacher logits must have one shape; got {tuple(student_logits.shape)} and "
                         f"{tuple(teacher_logits.shape)} (the same tokenizer and rows?).")
    soft = F.kl_div(F.log_softmax(student_logits / temperature, dim=-1),
                    F.log_softmax(teacher_logits / temperature, dim=-1), log_target=True, reduction="batchmean")
    hard = F.cross_entropy(student_logits, targets)
    return alpha * temperature**2 * soft + (1 - alpha) * hard


def distillation_trainer(teacher, temperature: float, alpha: float, cache_mb: int = 256, preset=None):
    """The course's completion-only `SFTTrainer` (`training.completion_only_trainer`) whose loss is
    `distillation_loss` against the frozen `teacher`'s logits on the same rows: the student and teacher share the
    tokenizer, so their completion positions are the same. With a `preset` that shares prompt computation (the
    CPU's `share_prompt_forward`), the columns every row of a batch starts with (the chat template's system turn and
    the date task's instruction) go through the student's and the teacher's backbone once per batch
    (`training.completion_logits`): the same loss and gradients up to rounding, a step about a third cheaper.

    The teacher is frozen, so its logits for a row are computed once and kept (up to `cache_mb` MB, float32): a
    row seen again (notebook 09's 16 steps of 16 on 16 labelled rows see each row 16 times) costs no teacher forward pass.
    """
    import torch

    from .training import completion_logits, completion_only_trainer

    share = bool(preset is not None and preset.share_prompt_forward)
    teacher.eval().requires_grad_(False)
    kept = TeacherLogits(teacher, cache_mb, share)

    class DistillationTrainer(completion_only_trainer(share)):
        teacher_logits = kept  # what it kept, and how many rows it computed and reused

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels = inputs["labels"][:, 1:]
            mask = labels != -100
            with self.accelerator.autocast():
                student_logits = completion_logits(model, inputs, mask, self.share_prefix, self.backbone_positions).float()
                with torch.no_grad():
                    teacher_logits = kept(inputs, mask)
            if return_outputs:
                raise ValueError("DistillationTrainer computes no full logits.")
            return distillation_loss(student_logits, teacher_logits, labels[mask], temperature, alpha)

    return DistillationTrainer


class TeacherLogits:
    """A frozen teacher's completion logits (`training.completion_logits`), kept per row (its unpadded token ids,
    positions and completion positions) up to `cache_mb` MB; rows not kept are computed in one forward pass of
    those rows alone. TRL's collator pads on the right, so a row's logits are those of the same row in any batch,
    up to rounding (under bf16 autocast, the batch it was first computed in decides the last digits). `share_prefix`:
    the rows' common first columns run once (`training.completion_logits`)."""

    def __init__(self, teacher, cache_mb: int = 256, share_prefix: bool = False):
        self.teacher, self.limit, self.bytes, self.share_prefix = teacher, cache_mb * 2**20, 0, share_prefix
        self.kept: dict[tuple, object] = {}
        self.computed = self.reused = 0

    def __call__(self, inputs: dict, mask):
        import torch

        from .training import completion_logits

        ids, attention, positions = inputs["input_ids"], inputs.get("attention_mask"), inputs.get("position_ids")
        real = [attention[i].bool() if attention is not None else torch.ones_like(row, dtype=torch.bool)
                for i, row in enumerate(ids)]
        keys = [(tuple(row[real[i]].tolist()), tuple(positions[i][real[i]].tolist()) if positions is not None else (),
                 tuple(mask[i].nonzero().flatten().tolist())) for i, row in enumerate(ids)]
        missing = [i for i, key in enumerate(keys) if key not in self.kept]
        found = {}
        if missing:
            rows = torch.tensor(missing, device=ids.device)
            sub = {k: v[rows] for k, v in inputs.items() if k in ("input_ids", "attention_mask", "position_ids")}
            logits = completion_logits(self.teacher, sub, mask[rows], self.share_prefix).float()
            for i, part in zip(missing, logits.split(mask[rows].sum(dim=1).tolist())):
                found[i] = part
                if keys[i] not in self.kept and self.bytes + part.numel() * 4 <= self.limit:
                    self.kept[keys[i]] = part.clone()  # a view would hold the whole batch's logits
                    self.bytes += part.numel() * 4
        self.computed += len(missing)
        self.reused += len(keys) - len(missing)
        return torch.cat([found[i] if i in found else self.kept[key] for i, key in enumerate(keys)])


# ---------------------------------------------------------------- notebook 09's teacher, student and data

STUDENT_LAYERS = tuple(range(20)) + (29,)  # the cpu preset's: the first 20 decoder layers and the last, 76 % of the weights
LABELLED = 16  # the training prompts whose true answer the student's owner has; the teacher answers the rest
DATA_CHOICES = ("labels", "teacher answers", "teacher answers, labels where known")
TEACHER_FILE = "adapter_model.safetensors"


def student_layers(teacher_layers: int) -> tuple[int, ...]:
    """The student's layers for a teacher of `teacher_layers` decoder layers: the first two thirds and the last (the
    course model's 30 give `STUDENT_LAYERS`)."""
    if teacher_layers < 3:
        raise ValueError(f"a teacher needs at least 3 decoder layers to prune, got {teacher_layers}.")
    return tuple(range(round(2 * teacher_layers / 3))) + (teacher_layers - 1,)


def teacher_setup():
    """Notebook 03's LoRA recipe on the date task (the course's `SFTSetup` shorthand): the teacher's fine-tune."""
    from .training import SFTSetup

    return SFTSetup(method="lora", max_steps=24, learning_rate=1e-3, batch_size=8, seed=0)


def _adapter_sha256(adapter: Path) -> str:
    """One hash of the adapter's weights and its config (rank, alpha, targets: what makes the teacher)."""
    import hashlib

    from .models import _sha256

    return hashlib.sha256("".join(_sha256(adapter / name) for name in (TEACHER_FILE, "adapter_config.json"))
                          .encode()).hexdigest()


def course_teacher(preset, folder: str | Path, sha256: str | None = None, retrain: bool = False,
                   progress: bool = True):
    """The teacher: the course model with 03's LoRA fine-tune on the date task (`teacher_setup`), merged.

    Trained once and cached in `folder` (its adapter, ~20 MB, and its greedy answers to every training prompt);
    later calls load it (a few seconds). With `sha256` the cached adapter is used only when its weights and config
    have that hash (the grader's signed record), otherwise, or with `retrain`, it is trained again. Returns (teacher,
    tokenizer, {"sha256": the adapter's hash (weights and config), "answers": the teacher's answer to each training
    prompt}).
    """
    import json

    from . import evaluation
    from .models import load_adapter_model, load_model, load_tokenizer
    from .tasks import date_task_splits
    from .training import save_sft_artifacts, train_sft

    folder = Path(folder)
    adapter, answers_file = folder / "adapter", folder / "answers.json"
    weights = adapter / TEACHER_FILE
    train = date_task_splits(preset.n_train, preset.n_eval)["train"]
    files = (weights, adapter / "adapter_config.json", answers_file)
    cached = (not retrain and not adapter.is_symlink() and all(f.is_file() and not f.is_symlink() for f in files)
              and (sha256 is None or _adapter_sha256(adapter) == sha256))
    if cached:
        try:
            answers = json.loads(answers_file.read_text())
        except (ValueError, OSError):
            answers = None
        cached = (isinstance(answers, list) and len(answers) == len(train) and all(isinstance(a, str) for a in answers))
    if cached:
        teacher, tokenizer = load_adapter_model(adapter, preset.device, base=preset.model, merge=True)
    if not cached:
        tokenizer = load_tokenizer(preset.model)
        tuned, result = train_sft(load_model(preset.model, preset.device, seed=0), tokenizer, train, teacher_setup(),
                                  preset, folder / "trainer", progress=progress)
        folder.mkdir(parents=True, exist_ok=True)
        save_sft_artifacts(tuned, tokenizer, result, teacher_setup(), folder)
        teacher = tuned.merge_and_unload()
        with preset.autocast():
            _, replies = evaluation.exact_match(teacher, tokenizer, train, preset.eval_batch_size)
        answers = [evaluation.normalise_answer(r) for r in replies]
        answers_file.write_text(json.dumps(answers))
    teacher.eval().requires_grad_(False)
    return teacher, tokenizer, {"sha256": _adapter_sha256(adapter), "answers": answers}


def distillation_examples(choice: str, train, answers, labelled: int = LABELLED):
    """The student's training rows for one of `DATA_CHOICES`: "labels", the first `labelled` training prompts with
    their true answers (all a student without the teacher has); "teacher answers", every training prompt with the
    teacher's answer (sequence-level distillation: the teacher labels the prompts nobody labelled); "teacher
    answers, labels where known", the same with the true answer where there is one. A prompt the teacher left
    without an answer is dropped."""
    from .tasks import Example

    if choice not in DATA_CHOICES:
        raise ValueError(f"training_data must be one of {list(DATA_CHOICES)}, got {choice!r}.")
    if len(answers) != len(train):
        raise ValueError(f"answers must hold one answer per training prompt ({len(train)}), got {len(answers)}.")
    if choice == "labels":
        return list(train[:labelled])
    known = labelled if choice.endswith("where known") else 0
    return list(train[:known]) + [Example(e.prompt, a) for e, a in zip(train[known:], answers[known:]) if a]


def train_student(teacher, tokenizer, examples, args, temperature: float, alpha: float, preset, progress: bool = True):
    """The packaged mirror of notebook 09's student cell: a fresh `layer_pruned_student` of the teacher, trained in
    full on `examples` with the `SFTConfig` `args` by `distillation_trainer(teacher, temperature, alpha, preset=preset)`
    (alpha 0: the preset's SFT trainer, no teacher forward). Returns (student, TrainResult)."""
    from .training import run_trainer

    student = layer_pruned_student(teacher, student_layers(teacher.config.num_hidden_layers))
    trainer_cls = distillation_trainer(teacher, temperature, alpha, preset=preset) if alpha > 0 else None
    return run_trainer(student, tokenizer, examples, None, args, preset, "padded", progress=progress,
                       trainer_cls=trainer_cls)


def preset_student_args(preset) -> dict:
    """What the machine fixes in the student's `SFTConfig` (`STUDENT_ARGS` in the notebook): the preset's precision
    and device, and rows drawn at random (the "padded" layout). A full fine-tune takes a large step on each batch;
    length-grouped batches hold one surface form of the date each (their lengths differ by form), and measured
    worse on new dates."""
    from .training import preset_sft_args

    return preset_sft_args(preset, "padded")


def save_student(student, folder: str | Path) -> Path:
    """The student's weights alone (safetensors): `load_student` rebuilds its architecture from the teacher."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in student.state_dict().items() if k != "lm_head.weight"}
    save_file(state, folder / "model.safetensors")
    return folder


def load_student(teacher, folder: str | Path):
    """A `layer_pruned_student` of `teacher` holding the weights `save_student` wrote (every tensor, with its
    shape, or a clear error): nothing but tensors is read from `folder`."""
    from safetensors.torch import load_file

    path = Path(folder) / "model.safetensors"
    if not path.is_file() or path.is_symlink():
        raise FileNotFoundError(f"No student weights in {folder}: expected model.safetensors (save_student writes it).")
    layers = student_layers(teacher.config.num_hidden_layers)
    try:
        state = load_file(str(path), device="cpu")
    except Exception as error:  # safetensors raises its own error type on a truncated or foreign file
        raise ValueError(f"{path} is not a safetensors file of tensors ({type(error).__name__}: {error}).") from None
    student = layer_pruned_student(teacher, layers)
    own = student.state_dict()
    expected = {k: v for k, v in own.items() if k != "lm_head.weight"}
    if set(state) != set(expected) or any(state[k].shape != expected[k].shape or not state[k].is_floating_point()
                                          for k in expected):
        raise ValueError(f"{path} does not hold the student's {len(expected)} floating-point tensors with their shapes: "
                         f"not the {len(layers)}-layer student of this course.")
    student.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=False)
    student.tie_weights()
    return student.eval()


DISTILL_NAMES = ["training_data", "temperature", "alpha", "sft_config"]


def distillation_choices(sft_config, training_data, temperature, alpha, preset, step_budget: int) -> dict:
    """Exercise 9.2's choices, checked as the grader checks them: one of `DATA_CHOICES`, a temperature in
    [0.5, 10], alpha in [0, 1], and an `SFTConfig` whose only choices are `training.SFT_CHOICES` (with
    `STUDENT_ARGS`, `preset_student_args`), within the step budget. A `RecipeError` names what it cannot train."""
    from .training import RecipeError, _real, train_choices

    if not isinstance(training_data, str) or training_data not in DATA_CHOICES:
        raise RecipeError(f"training_data must be one of {list(DATA_CHOICES)}, got {str(training_data)[:80]!r}.")
    choices = {"training_data": training_data, "temperature": _real(temperature, "temperature", 0.5, 10),
               "alpha": _real(alpha, "alpha", 0, 1)}
    return choices | {"sft": train_choices(sft_config, "sft_config", preset, "padded", step_budget)}


def labels_only_args(preset, steps: int, output_dir: str | Path):
    """The `SFTConfig` of the student trained without the teacher, the grader's reference for Exercise 9.2:
    `steps` of 8 rows at learning rate 5e-4, seed 0, what the machine fixes (`preset_student_args`). (Section 5's
    labels-only run is the notebook's own cell, 16 steps of 16 rows.)"""
    from trl import SFTConfig

    return SFTConfig(output_dir=str(output_dir), max_steps=steps, per_device_train_batch_size=8, learning_rate=5e-4,
                     seed=0, **preset_student_args(preset))


def answer_logits(model, tokenizer, examples):
    """The model's logits at the positions that predict each answer token of `examples` (the chat prompt, then the
    answer), one row per answer token: (logits [tokens, vocabulary] in float32, the answer tokens, the index of the
    example each row belongs to). What the distillation loss compares, on real prompts."""
    import torch

    from .evaluation import render_prompt

    rows, targets, owners = [], [], []
    for index, example in enumerate(examples):
        prompt = tokenizer(render_prompt(tokenizer, example.prompt), add_special_tokens=False)["input_ids"]
        answer = tokenizer(example.answer, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([prompt + answer], device=next(model.parameters()).device)
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0].float()
        rows.append(logits[len(prompt) - 1:len(prompt) + len(answer) - 1].cpu())
        targets += answer
        owners += [index] * len(answer)
    return torch.cat(rows), torch.tensor(targets), torch.tensor(owners)


def teacher_dir(preset) -> Path:
    """Where the notebook's teacher is cached for this preset (in the course's model cache; the grader keeps its own)."""
    from .models import cache_root

    return cache_root() / "teacher" / preset.name
