"""What notebook 08 (GRPO) will be built on, measured on the cpu preset: whether a few GRPO steps with a checkable
reward raise the base model's success on held-out questions, how many groups give no gradient, a reward that can be
satisfied without solving the task, and time per step against group size and completion length.

The task is 06's counting question (a list of three items with their counts; "How many spoons are there?"), checked
by the course's judge: a reply is right when every number in it is the asked count. Every GRPO run starts from the
course model with a new LoRA adapter (r 16, alpha 32, q/k/v/o of every layer), samples `--generations` replies per
prompt (max(2G, 8) replies a step: 2 prompts at G = 4), trains `--steps` steps (lr `--lr`, constant, beta 0: TRL's
default, no reference model) with `GRPOTrainer` (on the cpu preset its subclass whose LM head scores the reply
tokens only, `training.scoring_labelled_positions_only`), and is measured on the same 48 held-out questions (greedy:
share right, judge score, words) and on the general probe. Runs:
- `base`: the model as it is; also the share of *groups* (4 replies sampled at temperature 1 for each of 32 training
  questions) whose replies are all right or all wrong: such a group has zero advantage and gives no gradient;
- `right`: reward 1 for a right reply, else 0 (the checker);
- `number`: reward 1 for any reply with a number in it (satisfiable without solving the task);
- options joined with "-": `g<G>` G replies per prompt, `len<L>` at most L completion tokens (time per step), `t<T>`
  sampling temperature T instead of 1 (for `base`: of its sampled groups); `right-g8-t0.7` combines them.
`run@N` trains N steps instead of `--steps`.
    python scripts/measure_grpo.py --runs base,right,number,right-g8,right-len24 --out build/measure_grpo.jsonl
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HELDOUT_SEED, TRAIN_SEED = 8081, 8080


def number_reward(completions, **_) -> list[float]:
    """1.0 for any reply that contains a number: a reward the policy can satisfy without counting anything."""
    from ftcourse.preferences import reply_numbers
    from ftcourse.rlhf import reply_text

    return [float(bool(reply_numbers(reply_text(c)))) for c in completions]


def measure(run: str, steps: int, learning_rate: float, generations: int, seed: int = 0) -> dict:
    """One run; `seed` > 0 draws other training questions and seeds the adapter, the order and the sampling with it."""
    from peft import LoraConfig
    from transformers.trainer_callback import PrinterCallback
    from trl import GRPOConfig, GRPOTrainer

    from ftcourse import grpo, preferences, rlhf
    from ftcourse.models import load_model, load_tokenizer
    from ftcourse.notebook import seed_everything
    from ftcourse.presets import get_preset
    from ftcourse.probe import run_probe
    from ftcourse.training import preset_trainer_class

    preset = get_preset("cpu")
    seed_everything(seed)
    tokenizer = load_tokenizer(preset.model)
    heldout = preferences.make_questions(48, HELDOUT_SEED)
    model = load_model(preset.model, preset.device, seed=seed)
    name, *options = run.split("-")
    option = {key: kind(o[len(key):]) for o in options for key, kind in (("len", int), ("g", int), ("t", float))
              if o.startswith(key) and o[len(key):].replace(".", "", 1).isdigit()}
    if len(option) != len(options):
        raise SystemExit(f"unknown option in {run!r}: g<G>, len<L> or t<T>, joined with '-'")
    group, length, temperature = option.get("g", generations), option.get("len", 12), option.get("t", 1.0)
    row: dict = {"run": run, "steps": steps, "learning_rate": learning_rate, "temperature": temperature, "seed": seed}
    start = time.perf_counter()
    if name == "base":
        with preset.autocast():
            row |= grpo.zero_advantage_share(model, tokenizer, preferences.make_questions(32, TRAIN_SEED + 100 * seed),
                                             group, temperature)
        trained = model
    elif name in ("right", "number"):
        reward = grpo.checker_reward if name == "right" else number_reward
        args = GRPOConfig(output_dir=str(ROOT / "build" / "measure_grpo"), max_steps=steps, learning_rate=learning_rate,
                          lr_scheduler_type="constant", per_device_train_batch_size=max(2 * group, 8),
                          num_generations=group, max_completion_length=length, temperature=temperature, beta=0.0, seed=seed,
                          reward_weights=[1.0, 0.0], **rlhf.preset_rl_args(preset))
        questions = preferences.make_questions(steps * 8, TRAIN_SEED + 100 * seed)
        trainer = preset_trainer_class(GRPOTrainer, preset)(
            model=model, reward_funcs=[reward, rlhf.judge_reward], args=args, train_dataset=rlhf.rl_dataset(questions),
            processing_class=tokenizer, peft_config=LoraConfig(task_type="CAUSAL_LM", r=16, lora_alpha=32,
                                                               target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
        trainer.remove_callback(PrinterCallback)
        began = time.perf_counter()
        trainer.train()
        logs = [h for h in trainer.state.log_history if "reward" in h]
        row |= {"group": group, "completion_length": length, "step_s": (time.perf_counter() - began) / steps,
                "reward_curve": [round(h[f"rewards/{reward.__name__}/mean"], 3) for h in logs],
                "judge_curve": [round(h["rewards/judge_reward/mean"], 3) for h in logs],
                "zero_std_curve": [round(h.get("frac_reward_zero_std", float("nan")), 3) for h in logs]}
        trained = trainer.model.eval()
    else:
        raise SystemExit(f"unknown run {run!r}: base, right or number, with options")
    with preset.autocast():
        replies = rlhf.sample_replies(trained, tokenizer, heldout, n=1, max_new_tokens=12, temperature=0)
        row |= rlhf.judge_replies(heldout, replies) | {"replies": [r[0] for r in replies[:6]]}
        row["seconds"] = time.perf_counter() - start
        probe = run_probe(trained, tokenizer, batch_size=preset.eval_batch_size)
    return row | {"probe_accuracy": probe.accuracy, "probe_perplexity": probe.perplexity}


def main() -> None:
    from bench_io import measure_runs

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="base,right,number,right-g8,right-len24")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--generations", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0, help="0: the README's rows; another: other questions, adapter, order")
    parser.add_argument("--out", default=str(ROOT / "build" / "measure_grpo.jsonl"))
    parser.add_argument("--append", action="store_true", help="add to --out instead of starting it afresh")
    args = parser.parse_args()

    def report(run: str, row: dict) -> str:
        extra = (f"sampled right {row['sampled_right']:.2f}, groups all right {row['groups_all_right']:.2f}, all wrong "
                 f"{row['groups_all_wrong']:.2f}" if run.startswith("base")
                 else f"{row['step_s']:.1f} s/step, reward {row['reward_curve']}, zero-std {row['zero_std_curve']}")
        return (f"{run:>12}: right {row['right']:.3f}  judge {row['judge']:.3f}  words {row['words']:.2f}  "
                f"probe {row['probe_accuracy']:.3f}/{row['probe_perplexity']:.2f}  {row['seconds']:.0f} s  {extra}  "
                f"{row['replies'][:3]}")

    measure_runs(args.runs, args.steps, Path(args.out), args.append,
                 lambda run, steps: measure(run, steps, args.lr, args.generations, args.seed), report)


if __name__ == "__main__":
    main()
