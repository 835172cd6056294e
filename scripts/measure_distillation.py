"""Can a smaller student keep the teacher's skill on this machine? The first measurement for notebook 09.

Teacher: the course model with a LoRA fine-tune on 03's date task (merged). Students: layer-pruned copies of the
teacher (`ftcourse.distill.layer_pruned_student`), each trained in full for the same steps from the same start
two ways: on the labels alone (alpha 0) and on the teacher's soft targets mixed with the labels
(`distill.distillation_trainer`, temperature T, weight alpha). Exact match on the 64 validation dates.

    python scripts/measure_distillation.py [--students 0-29:2 0-19,29] [--steps 48] [--lr 5e-4] [--t 2] [--alpha 0.5]
    python scripts/measure_distillation.py --students 0-19,29 --variants 0:0:5e-4 1:0.5:5e-4 2:0.5:2e-4

`--scarce N` asks whether the teacher helps when labels are scarce: the student trains (same steps, --lr) on N
labelled examples only; on the teacher's greedy answers to every training prompt (sequence-level distillation: the
teacher labels the prompts nobody labelled); on those answers with the teacher's soft targets (T 1, alpha 1); and,
as the ceiling, on every training prompt's true label.

`--variants T:alpha:lr ...` replaces the two runs per student (labels only, then T/alpha at --lr) with one run per
variant (alpha 0: labels only, T unused), for a sweep of the loss's temperature, weight and learning rate.

A student is a list of kept layers: `a-b:s` (a to b step s) or comma-separated indices, joined by commas.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def parse_layers(spec: str) -> list[int]:
    layers: list[int] = []
    for part in spec.split(","):
        if "-" in part:
            span, _, step = part.partition(":")
            first, last = (int(x) for x in span.split("-"))
            layers += range(first, last + 1, int(step or 1))
        else:
            layers.append(int(part))
    return layers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--students", nargs="+", default=["0-29:2", "0-19,29"])
    parser.add_argument("--steps", type=int, default=48)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--t", type=float, default=2.0)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--variants", nargs="+", metavar="T:ALPHA:LR")
    parser.add_argument("--scarce", type=int, metavar="N")
    parser.add_argument("--seed", type=int, default=0, help="the students' training seed (and which N are labelled); "
                                                              "the teacher is always seed 0's")
    parser.add_argument("--out", default="build/measure_distillation.json")
    args = parser.parse_args()

    import torch

    from ftcourse import distill, evaluation, plots
    from ftcourse.models import load_model, load_tokenizer
    from ftcourse.presets import get_preset
    from ftcourse.tasks import date_task_splits
    from accelerate.utils import extract_model_from_parallel

    from ftcourse.training import SFTSetup, completion_only_trainer, sft_config, to_prompt_completion, train_sft

    preset = get_preset("cpu")
    tokenizer = load_tokenizer(preset.model)
    splits = date_task_splits(preset.n_train, preset.n_eval)

    def exact_match(model) -> float:
        with preset.autocast():
            return evaluation.exact_match(model, tokenizer, splits["validation"], preset.eval_batch_size)[0]

    start = time.perf_counter()
    teacher, _ = train_sft(load_model(preset.model, preset.device, seed=0), tokenizer, splits["train"],
                           SFTSetup(method="lora", max_steps=24, learning_rate=1e-3, batch_size=8, seed=0), preset,
                           ROOT / "build" / "distill_teacher", progress=False)
    teacher = teacher.merge_and_unload().eval()
    rows = [{"model": "teacher (LoRA, merged)", "layers": teacher.config.num_hidden_layers,
             "params_m": distill.parameter_count(teacher) / 1e6, "exact_match": exact_match(teacher),
             "train_s": time.perf_counter() - start}]
    print(plots.table(rows, list(rows[0]), floatfmt=".3f"), flush=True)
    data = to_prompt_completion(splits["train"])
    datasets = {}
    if args.scarce:
        from ftcourse.tasks import Example

        with preset.autocast():
            _, answers = evaluation.exact_match(teacher, tokenizer, splits["train"], preset.eval_batch_size)
        generated = [Example(e.prompt, evaluation.normalise_answer(a)) for e, a in zip(splits["train"], answers)]
        agree = sum(g.answer == e.answer for g, e in zip(generated, splits["train"])) / len(generated)
        print(f"teacher's answers to the {len(generated)} training prompts: {agree:.3f} equal the true labels", flush=True)
        import random

        labelled = random.Random(args.seed).sample(splits["train"], args.scarce) if args.seed else splits["train"][:args.scarce]
        datasets = {f"{args.scarce} labelled only": (to_prompt_completion(labelled), 0.0, 1.0),
                    "teacher-generated answers": (to_prompt_completion(generated), 0.0, 1.0),
                    "teacher-generated + soft targets T 1": (to_prompt_completion(generated), 1.0, 1.0),
                    "every prompt's true label (ceiling)": (data, 0.0, 1.0)}
    for spec in args.students:
        keep = parse_layers(spec)
        variants = ([(name, t, a, args.lr, d) for name, (d, a, t) in datasets.items()] if datasets
                    else [("", *(float(x) for x in v.split(":")), data) for v in args.variants] if args.variants
                    else [("", args.t, 0.0, args.lr, data), ("", args.t, args.alpha, args.lr, data)])
        for name, temperature, alpha, lr, train_data in variants:
            student = distill.layer_pruned_student(teacher, keep)
            setup = SFTSetup(method="full", max_steps=args.steps, learning_rate=lr, batch_size=8, seed=args.seed)
            torch.manual_seed(args.seed)
            trainer_cls = (completion_only_trainer() if alpha == 0
                           else distill.distillation_trainer(teacher, temperature, alpha))
            trainer = trainer_cls(model=student, args=sft_config(setup, preset, ROOT / "build" / "distill_student"),
                                  train_dataset=train_data, processing_class=tokenizer)
            began = time.perf_counter()
            trainer.train()
            seconds = time.perf_counter() - began
            losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
            rows.append({"model": f"student {spec}, " + (name or ("labels only" if alpha == 0 else
                                                                   f"T {temperature:g}, alpha {alpha:g}")) + f", lr {lr:g}",
                         "layers": len(keep), "params_m": distill.parameter_count(student) / 1e6,
                         "exact_match": exact_match(extract_model_from_parallel(trainer.model, keep_fp32_wrapper=False).eval()), "train_s": seconds,
                         "first_loss": losses[0], "last_loss": losses[-1]})
            print(plots.table(rows, list(rows[-1]), floatfmt=".3f"), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
