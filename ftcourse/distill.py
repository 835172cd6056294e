"""Knowledge distillation instruments for notebook 09 (not built yet): a student made by dropping layers of the
teacher, the distillation loss as the library computes it, and the trainer that trains a student on it.

The loss on the completion tokens, with temperature T and mixing weight alpha (Hinton et al. 2015):

    loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(student, labels)

T^2 keeps the soft term's gradients on the scale of the hard term's as T grows.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence


def parameter_count(model) -> int:
    """Every parameter of `model` (tied embeddings counted once)."""
    return sum(p.numel() for p in model.parameters())


def layer_pruned_student(teacher, keep: Sequence[int]):
    """A new causal LM of the teacher's architecture holding only the decoder layers `keep` (indices into the
    teacher's, in order), with the teacher's weights for them and for everything else (embeddings, final norm,
    head) and its generation settings. The teacher is left untouched."""
    from transformers import AutoModelForCausalLM

    layers = teacher.config.num_hidden_layers
    keep = list(keep)
    if not keep or keep != sorted(set(keep)) or not all(isinstance(i, int) and 0 <= i < layers for i in keep):
        raise ValueError(f"keep must list distinct layer indices in increasing order, each in 0..{layers - 1}; "
                         f"got {keep}.")
    config = copy.deepcopy(teacher.config)
    config.num_hidden_layers = len(keep)
    if getattr(config, "layer_types", None):
        config.layer_types = [config.layer_types[i] for i in keep]
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
    student.tie_weights()
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


def distillation_trainer(teacher, temperature: float, alpha: float):
    """The course's completion-only `SFTTrainer` (`training.completion_only_trainer`) whose loss is
    `distillation_loss` against the frozen `teacher`'s logits on the same rows: the student and teacher share the
    tokenizer, so their completion positions are the same."""
    import torch

    from .training import completion_only_trainer

    teacher.eval().requires_grad_(False)

    class DistillationTrainer(completion_only_trainer()):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels = inputs["labels"][:, 1:]
            mask = labels != -100
            backbone = {k: inputs[k] for k in ("input_ids", "attention_mask", "position_ids") if k in inputs}

            def completion_logits(lm):
                hidden = getattr(lm, lm.base_model_prefix)(**backbone, use_cache=False).last_hidden_state
                return lm.get_output_embeddings()(hidden[:, :-1][mask]).float()

            base = model.get_base_model() if hasattr(model, "get_base_model") else model
            with self.accelerator.autocast():
                student_logits = completion_logits(base)
                with torch.no_grad():
                    teacher_logits = completion_logits(teacher)
            if return_outputs:
                raise ValueError("DistillationTrainer computes no full logits.")
            return distillation_loss(student_logits, teacher_logits, labels[mask], temperature, alpha)

    return DistillationTrainer
