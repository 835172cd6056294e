"""What notebook 07 (DPO) will be built on, measured on the cpu preset: which pairs DPO learns from in a few steps,
beta, and DPO against SFT on the same pairs and budget.

Every run starts from the course model with a new LoRA adapter (r 16, alpha 32, q/k/v/o of every layer), trains
`--steps` steps of 4 pairs (lr 5e-4, constant) on pairs built from the same training questions, and is measured
on the same 48 held-out questions with the judge (`dpo.policy_scores`: greedy replies, judge score, share right,
the log-ratio to the reference on the policy's own replies) and on the general probe (accuracy, perplexity: the
course's regression gate). One thing changes per run:
- `style-b<beta>`: DPO on `dpo.style_pairs` (the model's own reply style, only the count differs) at that beta;
- `template-b<beta>`: DPO on `preferences.make_pairs(kind "wrong")` (the right count over a wrong one, each in one
  of the course's reply templates, which the model does not use) at that beta;
- `padded-b<beta>`: DPO on `preferences.make_pairs(kind "padded")` (a concise right reply over the same count
  padded: the pair differs in length only) at that beta;
- `sft-style`, `sft-template`: SFT (TRL's SFTTrainer) on the style (template) pairs' chosen replies only.
`run@N` trains N steps instead of `--steps`; `--seed K` draws other training questions and pairs (the held-out
questions stay the same).
    python scripts/measure_dpo.py --runs base,style-b0.1,style-b0.5,template-b0.1,sft-style --out build/measure_dpo.jsonl
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HELDOUT_SEED, TRAIN_SEED, PAIR_SEED = 7071, 7070, 1


STYLE_REPLY = "There are {count} {item} in total."  # how the course model answers these questions before tuning


def style_pairs(questions, seed: int) -> list:
    """One pair per question in the model's own style of reply: the right count over another item's count from the
    list (kind "style"); each checked against the judge."""
    import random

    from ftcourse import preferences

    rng, pairs = random.Random(seed), []
    for i, q in enumerate(questions):
        if not isinstance(q, preferences.Question):
            raise TypeError(f"question {i} must be a preferences.Question, got {type(q).__name__}.")
        chosen = STYLE_REPLY.format(count=q.answer, item=q.item)
        rejected = STYLE_REPLY.format(count=preferences.wrong_count(q, rng), item=q.item)
        if not preferences.judge(q, chosen) > preferences.judge(q, rejected):
            raise AssertionError(f"pair {i} does not follow the judge: {chosen!r} vs {rejected!r}")
        pairs.append(preferences.PreferencePair(q.prompt, chosen, rejected, "style"))
    return pairs


def lora_config():
    from peft import LoraConfig

    return LoraConfig(task_type="CAUSAL_LM", r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])


def measure(run: str, steps: int, learning_rate: float, seed: int = 0) -> dict:
    """One run; `seed` > 0 draws other training questions and pairs and seeds the adapter and the order with it."""
    from ftcourse import dpo, preferences
    from ftcourse.models import load_model, load_tokenizer
    from ftcourse.notebook import seed_everything
    from ftcourse.presets import get_preset
    from ftcourse.probe import run_probe

    preset = get_preset("cpu")
    seed_everything(seed)
    tokenizer = load_tokenizer(preset.model)
    heldout = preferences.make_questions(48, HELDOUT_SEED)
    questions = preferences.make_questions(steps * 4, TRAIN_SEED + 100 * seed)
    model = load_model(preset.model, preset.device, seed=seed)
    row: dict = {"run": run, "steps": steps, "learning_rate": learning_rate, "seed": seed}
    start = time.perf_counter()
    if run == "base":
        trained = model
    elif run.startswith(("style-b", "template-b", "padded-b")):
        from trl import DPOConfig

        beta = float(run.split("-b")[1])
        pairs = (style_pairs(questions, PAIR_SEED + seed) if run.startswith("style")
                 else preferences.make_pairs(questions, PAIR_SEED + seed, ("padded",) if run.startswith("padded")
                                             else ("wrong",)))
        args = DPOConfig(output_dir=str(ROOT / "build" / "measure_dpo"), max_steps=steps, learning_rate=learning_rate,
                         lr_scheduler_type="constant", per_device_train_batch_size=4, beta=beta, seed=seed,
                         **dpo.preset_dpo_args(preset))
        # the trainer enters autocast itself, step by step: inside an outer autocast region the bf16 copies of the
        # adapter's weights would be cached from the first step on, and the policy would never change
        trained, result, logged = dpo.train_dpo(model, tokenizer, pairs, lora_config(), args, progress=False,
                                                trainer_class=dpo.dpo_trainer_class(preset))
        with preset.autocast():
            rewards = dpo.implicit_rewards(trained, tokenizer, pairs, beta)
        row |= {"beta": beta, "losses": result.losses, "step_s": result.seconds / result.steps,
                "train_margin": rewards["margin"], "train_reward_accuracy": rewards["accuracy"],
                "last_logps_chosen": logged[-1]["logps/chosen"], "last_logps_rejected": logged[-1]["logps/rejected"]}
    elif run in ("sft-style", "sft-template"):
        from transformers.trainer_callback import PrinterCallback
        from trl import SFTConfig, SFTTrainer

        from ftcourse.tasks import Example
        from ftcourse.training import TrainingRecorder, preset_machine_args, to_prompt_completion

        pairs = (style_pairs(questions, PAIR_SEED + seed) if run == "sft-style"
                 else preferences.make_pairs(questions, PAIR_SEED + seed, ("wrong",)))
        chosen = [Example(p.prompt, p.chosen) for p in pairs]
        args = SFTConfig(output_dir=str(ROOT / "build" / "measure_dpo"), max_steps=steps, learning_rate=learning_rate,
                         lr_scheduler_type="constant", per_device_train_batch_size=4, seed=seed,
                         **preset_machine_args(preset))
        recorder = TrainingRecorder(progress=False)  # times the steps only, as train_dpo's does
        trainer = SFTTrainer(model=model, args=args, train_dataset=to_prompt_completion(chosen, "chat"),
                             processing_class=tokenizer, peft_config=lora_config(), callbacks=[recorder])
        trainer.remove_callback(PrinterCallback)
        trainer.train()
        trained = trainer.model.eval()
        row |= {"losses": recorder.losses, "step_s": sum(recorder.step_seconds) / len(recorder.step_seconds)}
    else:
        raise SystemExit(f"unknown run {run!r}: base, style-b<beta>, template-b<beta>, padded-b<beta>, sft-style or sft-template")
    with preset.autocast():
        scores = dpo.policy_scores(trained, tokenizer, heldout)
        seconds = time.perf_counter() - start
        probe = run_probe(trained, tokenizer, batch_size=preset.eval_batch_size)
    row |= {k: scores.get(k) for k in ("judge", "right", "words", "log_ratio", "reply_tokens")}  # None: not a PEFT model
    row |= {"replies": scores["replies"][:6], "seconds": seconds, "probe_s": time.perf_counter() - start - seconds,
            "probe_accuracy": probe.accuracy, "probe_perplexity": probe.perplexity}
    return row


def main() -> None:
    from bench_io import measure_runs

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="base,style-b0.1,style-b0.5,template-b0.1,sft-style")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=0, help="0: the README's rows; another: other questions and pairs")
    parser.add_argument("--out", default=str(ROOT / "build" / "measure_dpo.jsonl"))
    parser.add_argument("--append", action="store_true", help="add to --out instead of starting it afresh")
    args = parser.parse_args()

    def report(run: str, row: dict) -> str:
        ratio = "-" if row["log_ratio"] is None else f"{row['log_ratio']:.3f}"
        return (f"{run:>14}: judge {row['judge']:.3f}  right {row['right']:.3f}  words {row['words']:.2f}  "
                f"log-ratio {ratio}  probe {row['probe_accuracy']:.3f}/{row['probe_perplexity']:.2f}  "
                f"{row.get('step_s', 0):.1f} s/step  {row['seconds']:.0f} s  {row['replies'][:3]}")

    measure_runs(args.runs, args.steps, Path(args.out), args.append,
                 lambda run, steps: measure(run, steps, args.lr, args.seed), report)


if __name__ == "__main__":
    main()
