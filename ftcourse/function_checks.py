"""Checks of functions a learner writes, comparing them with the library's own behaviour.

Used two ways: a hidden test calls `check_label_mask(fn)` in the notebook; under autograde,
`python -I -m ftcourse.function_checks` reads {"exercise", "source"} on stdin, executes the learner's
solution-cell source in this fresh process and runs the same check, so nothing patched in the
learner's kernel takes part.
"""

from __future__ import annotations

import json
import sys

from .grading import VERDICT_MARK
from .tasks import make_date_examples

LABEL_MASK_SEED = 4242  # examples the learner never sees in the notebook


def trl_reference_labels(tokenizer, pairs: list[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) exactly as TRL's SFTTrainer builds them for prompt-completion chat data."""
    import tempfile

    from trl import SFTConfig, SFTTrainer

    from .models import load_model
    from .training import to_prompt_completion
    from .tasks import Example

    dataset = to_prompt_completion([Example(p, a) for p, a in pairs])
    with tempfile.TemporaryDirectory() as out:
        trainer = SFTTrainer(model=load_model(), processing_class=tokenizer, train_dataset=dataset,
                             args=SFTConfig(output_dir=out, report_to="none", bf16=False, use_cpu=True, max_length=None))
        rows = trainer.train_dataset
        return [(list(r["input_ids"]), list(r["labels"])) for r in rows]


def _describe_mismatch(name: str, got, want) -> str:
    if len(got) != len(want):
        return f"{name} has {len(got)} tokens, expected {len(want)}"
    first = next(i for i, (g, w) in enumerate(zip(got, want)) if g != w)
    return f"{name} differs first at position {first}: got {got[first]}, expected {want[first]} (of {len(want)} tokens)"


def check_label_mask(build_chat_labels, n_examples: int = 5, tokenizer=None) -> str:
    """Compare a learner's `build_chat_labels(tokenizer, prompt, answer)` with TRL on fresh examples."""
    from .models import load_tokenizer

    tokenizer = tokenizer or load_tokenizer()
    examples = make_date_examples(n_examples, LABEL_MASK_SEED)
    pairs = [(e.prompt, e.answer) for e in examples] + [("Say hello.", "Hello! How can I help you today?")]
    reference = trl_reference_labels(tokenizer, pairs)
    for (prompt, answer), (want_ids, want_labels) in zip(pairs, reference):
        out = build_chat_labels(tokenizer, prompt, answer)
        if not (isinstance(out, tuple) and len(out) == 2):
            raise AssertionError(f"build_chat_labels must return (input_ids, labels), got {type(out).__name__}.")
        ids, labels = (list(map(int, x)) for x in out)
        if ids != want_ids:
            raise AssertionError(f"For prompt {prompt[-30:]!r}: {_describe_mismatch('input_ids', ids, want_ids)}.")
        if labels != want_labels:
            raise AssertionError(f"For prompt {prompt[-30:]!r}: {_describe_mismatch('labels', labels, want_labels)}. "
                                 "Prompt tokens must be -100, completion tokens (answer, <|im_end|>, newline) kept.")
    return f"build_chat_labels matches TRL's masking on {len(pairs)} unseen examples."


def hidden_scenarios():
    """(scenario, the guide's answer) pairs the learner never sees; each tests one rule or the order of two.

    The answers follow the rules of notebook 01, §3; rules 7-10 depend on the estimator, and
    tests/test_decision.py checks those answers against `method_fits`.
    """
    from .decision import Scenario

    return [
        (Scenario("Support replies already pass review with a 5-shot prompt", prompting_meets_target=True,
                  n_demonstrations=50_000, model="llama-2-7b", gpu_gb=80), "prompting"),
        (Scenario("Answer questions about this week's price list", needs_fresh_knowledge=True,
                  n_demonstrations=3_000), "retrieval"),
        (Scenario("A 1.7B teacher tags invoices well; the phone app needs a 135M model", wants_smaller_model=True,
                  teacher_available=True, n_demonstrations=500), "distillation"),
        (Scenario("Wants a smaller model, but nothing does the task well yet", wants_smaller_model=True,
                  n_demonstrations=20_000, model="smollm2-135m", gpu_gb=24), "sft"),
        (Scenario("Unit tests check generated SQL; 40 worked examples", has_verifiable_reward=True,
                  n_demonstrations=40, model="smollm2-1.7b", gpu_gb=24), "grpo"),
        (Scenario("Unit tests check the code, and 30k reviewed solutions exist", has_verifiable_reward=True,
                  n_demonstrations=30_000, model="smollm2-360m", gpu_gb=80), "sft"),
        (Scenario("Annotators ranked pairs of summaries", has_preference_pairs=True, n_demonstrations=100), "dpo"),
        (Scenario("Twelve example emails in the house tone", n_demonstrations=12, model="mistral-7b", gpu_gb=80),
         "dont_fine_tune"),
        (Scenario("50k labelled tickets, 1.7B model on an 80 GB card", n_demonstrations=50_000,
                  model="smollm2-1.7b", gpu_gb=80), "sft"),
        (Scenario("50k labelled tickets, Llama-3.1-8B on a 24 GB card", n_demonstrations=50_000,
                  model="llama-3.1-8b", gpu_gb=24), "lora"),
        (Scenario("2k examples, Mistral-7B on a 16 GB T4", n_demonstrations=2_000, model="mistral-7b", gpu_gb=16),
         "qlora"),
        (Scenario("2k examples, Llama-3.1-8B on a 4 GB laptop GPU", n_demonstrations=2_000, model="llama-3.1-8b",
                  gpu_gb=4), "dont_fine_tune"),
        (Scenario("900 examples, 360M model on a 16 GB T4", n_demonstrations=900, model="smollm2-360m", gpu_gb=16),
         "lora"),
    ]


def check_choose_approach(choose_approach) -> str:
    """Compare a learner's `choose_approach(scenario)` with the guide on scenarios they have not seen."""
    wrong = []
    scenarios = hidden_scenarios()
    for scenario, want in scenarios:
        got = choose_approach(scenario)
        if got != want:
            wrong.append(f"{scenario.description!r}: got {got!r}, the guide says {want!r}")
    if wrong:
        raise AssertionError(f"{len(wrong)} of {len(scenarios)} unseen scenarios differ from the guide:\n  "
                             + "\n  ".join(wrong))
    return f"choose_approach follows the guide on {len(scenarios)} unseen scenarios."


CLEANING_THRESHOLDS = {"precision": 0.95, "recall": 0.95, "per_problem_recall": 0.8}


def hidden_dump(seed: int | None = None):
    """The grader's raw dump: other examples, other test items, other variants of each problem."""
    from .data_quality import DumpRecipe, make_raw_dump
    from .grading import heldout_seed
    from .tasks import make_number_examples

    seed = heldout_seed() if seed is None else seed
    examples = make_number_examples(520, seed + 1)
    tests = [e for e in make_number_examples(120, seed + 2) if e.answer not in {x.answer for x in examples}][:48]
    lines, labels = make_raw_dump(examples, tests, seed, DumpRecipe(), hidden=True)
    return lines, labels, tests


def check_clean_dump(clean_dump, tokenizer=None, max_tokens: int = 128) -> str:
    """Run a learner's `clean_dump(lines, test_examples, tokenizer, max_tokens)` on the grader's dump and score it."""
    from .data_quality import PROBLEMS, score_cleaning
    from .models import load_tokenizer

    tokenizer = tokenizer or load_tokenizer()
    lines, labels, tests = hidden_dump()
    out = clean_dump(lines, tests, tokenizer, max_tokens)
    if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], dict)):
        raise AssertionError("clean_dump must return (kept_rows, flags) with flags a dict {row index: problem}.")
    kept, flags = out
    score = score_cleaning(flags, labels)
    misses = [f"{name} {score[name]:.2f} < {CLEANING_THRESHOLDS[name]}" for name in ("precision", "recall")
              if score[name] < CLEANING_THRESHOLDS[name]]
    misses += [f"recall of {p} {score['recall_' + p]:.2f} < {CLEANING_THRESHOLDS['per_problem_recall']}"
               for p in PROBLEMS if score["recall_" + p] < CLEANING_THRESHOLDS["per_problem_recall"]]
    expected_kept = labels.count("ok")
    if len(kept) != len(lines) - len(flags):
        misses.append(f"kept {len(kept)} rows but flagged {len(flags)} of {len(lines)}: every row is kept or flagged")
    summary = (f"precision {score['precision']:.3f}, recall {score['recall']:.3f} on a dump of {len(lines)} rows "
               f"({len(lines) - expected_kept} planted problems)")
    if misses:
        raise AssertionError(f"The cleaning pipeline misses on the grader's dump: {'; '.join(misses)} ({summary}).")
    return f"clean_dump passes on the grader's dump: {summary}."


LORA_LAYER_CASES = ((64, 48, 4, 8.0, True), (96, 32, 1, 1.0, False), (40, 80, 16, 64.0, True))  # in, out, r, alpha, bias


def check_lora_layer(layer_cls) -> str:
    """A learner's `LoRALinear(base, r, alpha)` against PEFT's LoRA layer on shapes the notebook never uses."""
    import torch

    from .lora import compare_lora_layer

    lines = []
    for i, (d_in, d_out, r, alpha, bias) in enumerate(LORA_LAYER_CASES):
        torch.manual_seed(100 + i)
        base = torch.nn.Linear(d_in, d_out, bias=bias)
        result = compare_lora_layer(layer_cls, base, r, alpha, seed=200 + i)
        if not result.ok(atol=1e-5):
            raise AssertionError(f"Linear({d_in}, {d_out}, bias={bias}), r={r}, alpha={alpha:g}: {result} "
                                 "(every difference must be <= 1e-5, the count exact, the base frozen).")
        lines.append(f"r={r}: max difference {max(result.output, result.grad_A, result.grad_B, result.grad_input):.1e}")
    return "LoRALinear matches PEFT's layer: " + "; ".join(lines) + "."


NF4_SEED = 5151  # tensors the learner never sees in the notebook


def _nf4_cases():
    import torch

    g = torch.Generator().manual_seed(NF4_SEED)
    outlier = torch.randn(48, 64, generator=g) * 0.02
    outlier[7, 11] = 0.9  # one large weight dominates its block's scale
    heavy = torch.distributions.StudentT(3.0).sample((40, 96)) * 0.01
    return [("normal 64x128", torch.randn(64, 128, generator=g) * 0.02),
            ("33x70, last block partial", torch.randn(33, 70, generator=g) * 0.05),
            ("an outlier", outlier), ("heavy-tailed", heavy)]


def check_nf4(nf4_quantize, nf4_dequantize, block_size: int = 64) -> str:
    """A learner's NF4 quantize/dequantize against bitsandbytes' 4-bit round trip on fresh tensors."""
    import torch

    from .quantization import bnb_nf4_code, bnb_nf4_round_trip, rmse

    code = bnb_nf4_code()
    lines = []
    for name, weight in _nf4_cases():
        want_idx, want_absmax, want_weight = bnb_nf4_round_trip(weight, block_size)
        out = nf4_quantize(weight.clone(), code, block_size)
        if not (isinstance(out, tuple) and len(out) == 2):
            raise AssertionError(f"nf4_quantize must return (indices, absmax), got {type(out).__name__}.")
        idx, absmax = (torch.as_tensor(x) for x in out)
        if idx.numel() != weight.numel() or absmax.numel() != want_absmax.numel():
            raise AssertionError(f"{name}: expected {weight.numel()} indices and {want_absmax.numel()} absmax values "
                                 f"(one per block of {block_size}, the last one partial), got {idx.numel()} and {absmax.numel()}.")
        if not torch.allclose(absmax.reshape(-1).float(), want_absmax, rtol=1e-6, atol=0):
            worst = int((absmax.reshape(-1).float() - want_absmax).abs().argmax())
            raise AssertionError(f"{name}: absmax of block {worst} is {float(absmax.reshape(-1)[worst]):.6g}, "
                                 f"bitsandbytes has {float(want_absmax[worst]):.6g}.")
        agree = float((idx.reshape(-1).long() == want_idx.long()).float().mean())
        if agree < 0.999:
            first = int((idx.reshape(-1).long() != want_idx.long()).nonzero()[0])
            raise AssertionError(f"{name}: only {agree:.2%} of code indices equal bitsandbytes'; the first differs at "
                                 f"weight {first}: got {int(idx.reshape(-1)[first])}, expected {int(want_idx[first])}.")
        restored = torch.as_tensor(nf4_dequantize(want_idx.clone(), want_absmax.clone(), code, tuple(weight.shape), block_size))
        if tuple(restored.shape) != tuple(weight.shape):
            raise AssertionError(f"{name}: nf4_dequantize must return shape {tuple(weight.shape)}, got {tuple(restored.shape)}.")
        diff = float((restored.float() - want_weight).abs().max())
        if diff > 1e-6:
            raise AssertionError(f"{name}: dequantising bitsandbytes' codes differs from its result by up to {diff:.2e}.")
        lines.append(f"{name}: indices {agree:.2%} equal, RMSE {rmse(weight, restored):.2e}")
    return "NF4 matches bitsandbytes: " + "; ".join(lines) + "."


CHECKS = {"05_nf4": (("nf4_quantize", "nf4_dequantize"), check_nf4),
          "04_lora_layer": ("LoRALinear", check_lora_layer),
          "03_label_mask": ("build_chat_labels", check_label_mask),
          "01_decision": ("choose_approach", check_choose_approach),
          "02_cleaning": ("clean_dump", check_clean_dump)}


def _main() -> int:
    import warnings

    warnings.filterwarnings("ignore")
    request = json.loads(sys.stdin.read())
    name, check = CHECKS[request["exercise"]]
    namespace: dict = {"__name__": "__learner__"}
    try:
        exec(compile(request["source"], "<solution cell>", "exec"), namespace)
        names = name if isinstance(name, tuple) else (name,)
        for defined in names:
            if defined not in namespace:
                raise AssertionError(f"The solution cell does not define {defined}().")
        message, passed = check(*(namespace[n] for n in names)), True
    except Exception as exc:  # any failure of the learner's code is a failed check, with its message
        message, passed = f"{type(exc).__name__}: {exc}", False
    print(VERDICT_MARK + json.dumps({"passed": passed, "message": message}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_main())
