"""Function exercises, the deciding side: the grader's inputs, and its comparison with the library.

Each check builds inputs the learner has never seen (from a seed derived from the instructor's secret),
keeps its answer key on its own side, sends only the inputs to the learner's code (a child process, or
the kernel for the instructor's own run of a solution notebook) and compares the data that comes back
with what the library computes here: TRL's labels, PEFT's LoRA layer, bitsandbytes' NF4, the dump's
planted labels, the decision guide's answers by construction.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Callable

from . import secret as secrets_
from .child import STATIC_PARTS
from .learner import LearnerCodeError, expect
from .references import cached
from .registry import Exercise
from .verdict import Verdict, failed, judge


@dataclasses.dataclass(frozen=True)
class FunctionCheck:
    """How one function exercise is checked."""

    op: str  # the child operation that calls the learner's function (ftcourse.grading.child.OPS)
    secret_inputs: bool  # inputs are hidden test data: a learner exception's text is not shown
    inputs: Callable  # (preset, secret) -> (inputs sent to the learner's code, answer key kept here)
    judge: Callable  # (exercise, preset, inputs, key, data) -> Verdict


def _failed_on(verdict: Verdict, problems: list[str], shown: int = 2) -> Verdict:
    """The verdict failed when a comparison found problems, the first `shown` of them named before its message."""
    if problems:
        verdict.passed = False
        verdict.message = "; ".join(problems[:shown]) + ". " + verdict.message
    return verdict


# ---------------------------------------------------------------- 1.1: the decision guide

GPU_SIZES = (4, 6, 8, 12, 16, 24, 40, 48, 80, 141)
SUCCESS_RATES = (0.02, 0.1, 0.5)  # a model that sometimes succeeds; 0.0 is the other case


def _n_boundary() -> dict:
    from ..decision import MANY_DEMONSTRATIONS as many, MIN_DEMONSTRATIONS as least

    return {"few": (0, 1, least // 4, least - 1), "some": (least, least + 1, 900, many - 1),
            "many": (many, many + 1, 3 * many, 25 * many)}


def _fits_table() -> dict:
    from ..decision import Scenario, method_fits
    from ..estimator import KNOWN_SHAPES

    return {(model, gpu): {m: method_fits(Scenario("", model=model, gpu_gb=gpu), m) for m in ("full", "lora", "qlora")}
            for model in KNOWN_SHAPES for gpu in GPU_SIZES}


def _hardware(rng: random.Random, table: dict, want: Callable) -> dict:
    choices = sorted(key for key, fits in table.items() if want(fits))
    model, gpu = rng.choice(choices)
    return {"model": model, "gpu_gb": gpu}


# the guide's cases: a signal rule (1-7, notebook 01 §3), and for the four training signals a parameterisation
# rule (A: full, B: lora, C: qlora, D: nothing fits); GRPO has few demonstrations by its own rule, so no A
DECISION_CASES = (["1", "2", "7"] + [f"{s}{p}" for s in "356" for p in "ABCD"] + [f"4{p}" for p in "BCD"])


def decision_case(case: str, rng: random.Random, table: dict) -> tuple[dict, str]:
    """A scenario whose first applicable signal rule, and parameterisation rule, is `case`, and its answer.

    Built by construction, not by a solver: every earlier rule is made false, the target rule true, and
    the fields of later rules are random, so the order of the rules is tested too.
    """
    from ..decision import MIN_DEMONSTRATIONS

    n = _n_boundary()
    coin = lambda: rng.random() < 0.5  # noqa: E731
    f = {"prompting_meets_target": False, "needs_fresh_knowledge": False, "wants_smaller_model": coin(),
         "teacher_available": coin(), "has_verifiable_reward": coin(),
         "base_success_rate": rng.choice((0.0, 0.0) + SUCCESS_RATES), "has_preference_pairs": coin(),
         "n_demonstrations": rng.choice(n[rng.choice(["few", "some", "many"])]), **_hardware(rng, table, lambda fits: True)}
    rule, param = case[0], case[1:]
    if rule == "1":
        return f | {"prompting_meets_target": True, "needs_fresh_knowledge": coin()}, "prompting"
    if rule == "2":
        return f | {"needs_fresh_knowledge": True}, "retrieval"
    if rule == "3":
        f |= {"wants_smaller_model": True, "teacher_available": True}
        signal = "distillation"
    else:
        not_distillation = rng.choice([(False, False), (True, False), (False, True)])
        f |= {"wants_smaller_model": not_distillation[0], "teacher_available": not_distillation[1]}
        grpo_applies = (f["has_verifiable_reward"] and f["base_success_rate"] > 0
                        and f["n_demonstrations"] < MIN_DEMONSTRATIONS)
        if rule == "4":
            f |= {"has_verifiable_reward": True, "base_success_rate": rng.choice(SUCCESS_RATES),
                  "n_demonstrations": rng.choice(n["few"])}
            signal = "grpo"
        elif rule == "5":
            if grpo_applies:  # rule 4 must not apply first: the model never succeeds, or there are enough demonstrations
                if coin():
                    f["base_success_rate"] = 0.0
                else:
                    f["n_demonstrations"] = rng.choice(n["some"] + n["many"])
            f["has_preference_pairs"] = True
            signal = "dpo"
        else:
            f["has_preference_pairs"] = False
            if rule == "6":
                f["n_demonstrations"] = rng.choice(n["some"] + n["many"])
                signal = "sft"
            elif rule == "7":  # few demonstrations, and no reward the model can climb (none, or it never succeeds)
                f["n_demonstrations"] = rng.choice(n["few"])
                if f["has_verifiable_reward"]:
                    f["base_success_rate"] = 0.0
                return f, "collect_data"
            else:
                raise ValueError(f"The guide's signal rules are 1-7, got {rule!r}.")
    if param == "A":  # many demonstrations and a full fine-tune fits
        return f | {"n_demonstrations": rng.choice(n["many"]), **_hardware(rng, table, lambda x: x["full"])}, f"{signal}+full"
    many = f["n_demonstrations"] >= n["many"][0]
    if param == "B":
        return f | _hardware(rng, table, lambda x: x["lora"] and not (many and x["full"])), f"{signal}+lora"
    if param == "C":
        return f | _hardware(rng, table, lambda x: x["qlora"] and not x["lora"] and not (many and x["full"])), f"{signal}+qlora"
    if param == "D":
        return f | _hardware(rng, table, lambda x: not any(x.values())), "smaller_model"
    raise ValueError(f"The guide's parameterisation rules are A-D, got {param!r}.")


def decision_cases(seed: int, n_extra: int = 10) -> tuple[list[dict], list[tuple[str, str]]]:
    """Every case once and `n_extra` more, shuffled: (scenario fields, [(case, answer)])."""
    rng = random.Random(seed)
    table = _fits_table()
    cases = list(DECISION_CASES) + [rng.choice(DECISION_CASES) for _ in range(n_extra)]
    rng.shuffle(cases)
    scenarios, key = [], []
    for i, case in enumerate(cases):
        fields, answer = decision_case(case, rng, table)
        scenarios.append({"description": f"unseen scenario {i + 1}", **fields})
        key.append((case, answer))
    return scenarios, key


def _decision_inputs(preset, secret):
    scenarios, key = decision_cases(secrets_.derived_seed("01_when_to_fine_tune/scenarios", secret))
    return {"scenarios": scenarios}, key


def _decision_judge(exercise, preset, inputs, key, answers) -> Verdict:
    expect(isinstance(answers, list) and len(answers) == len(key), "choose_approach gave no answer for every scenario.")
    wrong = sorted({case for (case, want), got in zip(key, answers) if got != want})
    share = 1 - sum(got != want for (_, want), got in zip(key, answers)) / len(key)
    verdict = judge(exercise, "-", {"share_agreeing": share, "scenarios": len(key)}, preset)
    if wrong:  # which rules, not which scenarios: the scenarios stay hidden
        named = [f"signal rule {c[0]}" + (f" with parameterisation {c[1]}" if len(c) > 1 else "") for c in wrong]
        verdict.message = (f"{round((1 - share) * len(key))} of {len(key)} unseen scenarios differ from the guide; "
                           f"they are scenarios where {'; '.join(named)} of the table applies first. " + verdict.message)
    return verdict


# ---------------------------------------------------------------- 1.2: the static bytes, counted by hand


def _unseen_shape(rng: random.Random, index: int) -> dict:
    """A Llama-style shape no notebook prints: head count and width, grouped KV heads, MLP ratio, vocabulary, tying."""
    heads = rng.choice((8, 12, 16, 24, 32))
    d_head = rng.choice((64, 128))
    hidden = heads * d_head
    return {"name": f"unseen-{index}", "n_layers": rng.randint(6, 40), "hidden": hidden,
            "intermediate": 64 * round(rng.uniform(2.5, 3.6) * hidden / 64), "n_heads": heads,
            "n_kv_heads": rng.choice([k for k in (1, 2, 4, 8, heads) if heads % k == 0]),
            "vocab": rng.choice((32000, 32768, 49152, 50304, 128256, 151936)), "tied_embeddings": rng.random() < 0.5}


def static_cases(seed: int) -> list[dict]:
    """Unseen shapes with plans that cover every rule of the count: full fine-tunes in 32 and 16 bits (pure and
    mixed precision), LoRA and QLoRA at random ranks and targets, QLoRA's block size and double quantization."""
    from ..estimator import ALL_LINEAR

    rng = random.Random(seed)

    def adapter(method: str, **fields) -> dict:
        targets = sorted(rng.sample(ALL_LINEAR, rng.randint(1, len(ALL_LINEAR))), key=ALL_LINEAR.index)
        return {"method": method, "lora_r": rng.choice((1, 4, 8, 16, 32, 64)), "lora_targets": targets, **fields}

    plans = [{"method": "full"}, {"method": "full", "weight_dtype": "bfloat16"},
             {"method": "full", "weight_dtype": "float16", "master_weights": True},
             {"method": "full", "weight_dtype": "bfloat16", "master_weights": True},
             {"method": "full", "master_weights": True},  # float32 weights: the master copy is the weights themselves
             adapter("lora"), adapter("lora", weight_dtype="bfloat16"),
             adapter("qlora"), adapter("qlora", double_quant=True),
             adapter("qlora", weight_dtype="bfloat16", double_quant=True, quant_block=128)]
    rng.shuffle(plans)
    return [{"shape": _unseen_shape(rng, i), "plan": plan} for i, plan in enumerate(plans)]


def describe_plan(plan: dict) -> str:
    """A plan in words, for a message that must not print the hidden shape's answer."""
    words = [plan["method"], f"{plan.get('weight_dtype', 'float32')} weights"]
    if plan["method"] == "full" and plan.get("master_weights"):
        words.append("master_weights=True")
    if plan["method"] != "full":
        words.append(f"r={plan['lora_r']} on {len(plan['lora_targets'])} of 7 linears")
    if plan["method"] == "qlora":
        words.append(f"quant_block={plan.get('quant_block', 64)}, double_quant={bool(plan.get('double_quant'))}")
    return ", ".join(words)


def _static_inputs(preset, secret):
    from ..estimator import ModelShape, TrainingPlan, estimate_memory

    cases = static_cases(secrets_.derived_seed("01_when_to_fine_tune/static_bytes", secret))
    key = []
    for case in cases:
        estimate = estimate_memory(ModelShape(**case["shape"]), TrainingPlan.from_data(case["plan"]))
        key.append({part: getattr(estimate, part) for part in STATIC_PARTS})
    return {"cases": cases}, key


def _static_judge(exercise, preset, inputs, key, rows) -> Verdict:
    expect(isinstance(rows, list) and len(rows) == len(key), "static_bytes gave no result for every plan.")
    worst, problems = 0.0, []
    for case, want, got in zip(inputs["cases"], key, rows):
        expect(isinstance(got, dict) and all(type(got.get(part)) in (int, float) for part in STATIC_PARTS),
               f"static_bytes must return numbers for {', '.join(STATIC_PARTS)}.")
        for part in STATIC_PARTS:  # not a finite number of bytes (NaN, infinity): as wrong as can be
            error = abs(got[part] - want[part]) / max(want[part], 1) if math.isfinite(got[part]) else math.inf
            worst = max(worst, error)
            if error > exercise.thresholds["max_relative_error"][1]:
                problems.append(f"{describe_plan(case['plan'])}: {part} is {got[part] / max(want[part], 1):.4g}x the count")
    verdict = judge(exercise, "-", {"max_relative_error": worst, "plans": len(key)}, preset)
    if problems:
        verdict.message = (f"{len(problems)} of {len(key) * len(STATIC_PARTS)} parts differ on unseen shapes: "
                           + "; ".join(problems[:3]) + ". " + verdict.message)
    return verdict


# ---------------------------------------------------------------- 2.1: the cleaning pipeline

def hidden_dump(seed: int):
    """The grader's raw dump: other examples, other test items, other variants of each problem."""
    from ..data_quality import DumpRecipe, make_raw_dump
    from ..tasks import make_number_examples

    examples = make_number_examples(520, seed + 1)
    tests = [e for e in make_number_examples(120, seed + 2) if e.answer not in {x.answer for x in examples}][:48]
    lines, labels = make_raw_dump(examples, tests, seed, DumpRecipe(), hidden=True)
    return lines, labels, tests


def _cleaning_inputs(preset, secret):
    lines, labels, tests = hidden_dump(secrets_.derived_seed("02_data_and_tooling/dump", secret))
    return {"lines": lines, "tests": [[e.prompt, e.answer] for e in tests], "max_tokens": preset.max_length}, labels


def _cleaning_judge(exercise, preset, inputs, labels, data) -> Verdict:
    from ..data_quality import PROBLEMS, score_cleaning

    expect(isinstance(data, dict) and isinstance(data.get("flags"), dict), "clean_dump returned no flags.")
    n = len(inputs["lines"])
    flags = {}
    for index, problem in data["flags"].items():
        expect(index.lstrip("-").isdigit() and 0 <= int(index) < n, f"flags has the row index {index!r}, not a row of the dump.")
        flags[int(index)] = problem
    score = score_cleaning(flags, labels)
    metrics = {"precision": score["precision"], "recall": score["recall"],
               "per_problem_recall": min(score["recall_" + p] for p in PROBLEMS), "rows": n,
               **{"recall_" + p: score["recall_" + p] for p in PROBLEMS}}
    verdict = judge(exercise, "-", metrics, preset)
    floor = exercise.thresholds["per_problem_recall"][1]
    missed = [f"recall of {p} {score['recall_' + p]:.2f}" for p in PROBLEMS if score["recall_" + p] < floor]
    if missed:
        verdict.message = f"On the grader's dump of {n} rows: {'; '.join(missed)} (each needs >= {floor}). " + verdict.message
    if data.get("kept") != n - len(flags):
        verdict.passed = False
        verdict.message = (f"kept {data.get('kept')} rows but flagged {len(flags)} of {n}: every row is kept or "
                           "flagged. " + verdict.message)
    return verdict


# ---------------------------------------------------------------- 3.1: the label mask

def trl_reference_labels(tokenizer, pairs) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) exactly as TRL's SFTTrainer builds them for prompt-completion chat data."""
    import tempfile

    from trl import SFTConfig, SFTTrainer

    from ..models import load_model
    from ..tasks import Example
    from ..training import to_prompt_completion

    dataset = to_prompt_completion([Example(p, a) for p, a in pairs])
    with tempfile.TemporaryDirectory() as out:
        trainer = SFTTrainer(model=load_model(), processing_class=tokenizer, train_dataset=dataset,
                             args=SFTConfig(output_dir=out, report_to="none", bf16=False, use_cpu=True, max_length=None))
        return [(list(r["input_ids"]), list(r["labels"])) for r in trainer.train_dataset]


def _label_mask_inputs(preset, secret):
    from ..tasks import make_date_examples

    examples = make_date_examples(5, secrets_.derived_seed("03_sft/label_mask", secret))
    pairs = [[e.prompt, e.answer] for e in examples] + [["Say hello.", "Hello! How can I help you today?"]]
    return {"pairs": pairs}, secret  # the key: the secret that signs the cached library reference


def _describe_mismatch(name: str, got, want) -> str:
    if len(got) != len(want):
        return f"{name} has {len(got)} tokens, expected {len(want)}"
    first = next(i for i, (g, w) in enumerate(zip(got, want)) if g != w)
    return f"{name} differs first at position {first}: got {got[first]}, expected {want[first]} (of {len(want)} tokens)"


def _label_mask_judge(exercise, preset, inputs, secret, rows) -> Verdict:
    from ..models import load_tokenizer

    pairs = inputs["pairs"]
    expect(isinstance(rows, list) and len(rows) == len(pairs), "build_chat_labels gave no result for every example.")
    reference = cached("trl_labels", pairs, lambda: {"rows": trl_reference_labels(load_tokenizer(), pairs)}, secret)["rows"]
    problems = []
    for (prompt, _), (ids, labels), (want_ids, want_labels) in zip(pairs, rows, reference):
        if ids != want_ids:
            problems.append(_describe_mismatch("input_ids", ids, want_ids))
        elif labels != want_labels:
            problems.append(_describe_mismatch("labels", labels, want_labels))
    verdict = judge(exercise, "-", {"share_matching": 1 - len(problems) / len(pairs), "examples": len(pairs)}, preset)
    if problems:
        verdict.message = f"{len(problems)} of {len(pairs)} unseen examples differ from TRL: {problems[0]}. " + verdict.message
    return verdict


# ---------------------------------------------------------------- 4.1: the LoRA layer

LORA_LAYER_CASES = ((64, 48, 4, 8.0, True), (96, 32, 1, 1.0, False), (40, 80, 16, 64.0, True))  # in, out, r, alpha, bias


def _lora_inputs(preset, secret):
    import torch

    from .child import encode_tensor

    g = torch.Generator().manual_seed(secrets_.derived_seed("04_lora/layer", secret))
    cases = []
    for d_in, d_out, r, alpha, bias in LORA_LAYER_CASES:
        x = torch.randn(2, 5, d_in, generator=g)
        cases.append({"weight": encode_tensor(torch.randn(d_out, d_in, generator=g) / d_in ** 0.5),
                      "bias": encode_tensor(torch.randn(d_out, generator=g) * 0.1) if bias else None,
                      "r": r, "alpha": alpha, "A": encode_tensor(torch.randn(r, d_in, generator=g) / d_in ** 0.5),
                      "B": encode_tensor(torch.randn(d_out, r, generator=g)), "x": encode_tensor(x),
                      "upstream": encode_tensor(torch.linspace(-1, 1, 2 * 5 * d_out).reshape(2, 5, d_out))})
    return {"cases": cases}, None


def peft_reference(case: dict) -> dict:
    """PEFT's LoRA layer on the case's base, A, B and input: its output and gradients."""
    import torch
    from torch import nn

    from ..lora import peft_lora_layer
    from .child import decode_tensor

    weight = decode_tensor(case["weight"])
    base = nn.Linear(weight.shape[1], weight.shape[0], bias=case["bias"] is not None)
    with torch.no_grad():
        base.weight.copy_(weight)
        if case["bias"] is not None:
            base.bias.copy_(decode_tensor(case["bias"]))
    layer = peft_lora_layer(base, case["r"], case["alpha"])
    with torch.no_grad():
        layer.lora_A["default"].weight.copy_(decode_tensor(case["A"]))
        layer.lora_B["default"].weight.copy_(decode_tensor(case["B"]))
    x = decode_tensor(case["x"]).requires_grad_(True)
    out = layer(x)
    (out * decode_tensor(case["upstream"])).sum().backward()
    return {"output": out.detach(), "grad_A": layer.lora_A["default"].weight.grad,
            "grad_B": layer.lora_B["default"].weight.grad, "grad_x": x.grad}


def _lora_judge(exercise, preset, inputs, key, results) -> Verdict:
    from .child import decode_tensor

    cases = inputs["cases"]
    expect(isinstance(results, list) and len(results) == len(cases), "LoRALinear gave no result for every case.")
    worst, problems = 0.0, []
    for case, got in zip(cases, results):
        d_out, d_in = case["weight"]["shape"]
        r = case["r"]
        label = f"Linear({d_in}, {d_out}, bias={case['bias'] is not None}), r={r}, alpha={case['alpha']:g}"
        want_shapes = {"lora_A": [r, d_in], "lora_B": [d_out, r]}
        if got.get("shapes") != want_shapes:
            problems.append(f"{label}: lora_A must have shape {tuple(want_shapes['lora_A'])} and lora_B "
                            f"{tuple(want_shapes['lora_B'])} (PEFT's convention); got {got.get('shapes')}")
            worst = float("inf")
            continue
        if got.get("b_start_max") != 0.0:
            problems.append(f"{label}: lora_B must start at zero, so the adapted layer starts equal to the base layer")
        if got.get("trainable") != r * (d_in + d_out):
            problems.append(f"{label}: {got.get('trainable')} trainable parameters, expected r(in+out) = {r * (d_in + d_out)}")
        if got.get("base_frozen") is not True:
            problems.append(f"{label}: the base layer's parameters must be frozen")
        reference = peft_reference(case)
        for name in ("output", "grad_A", "grad_B", "grad_x"):
            try:
                mine = decode_tensor(got[name]) if got.get(name) is not None else None
                diff = float((mine.float() - reference[name]).abs().max()) if mine is not None else float("inf")
            except (ValueError, RuntimeError, KeyError, TypeError):
                diff = float("inf")
            worst = max(worst, diff)
            if diff > exercise.thresholds["max_difference"][1]:
                problems.append(f"{label}: {name} differs from PEFT by {diff:.1e}")
    return _failed_on(judge(exercise, "-", {"max_difference": worst, "cases": len(cases)}, preset), problems, 3)


# ---------------------------------------------------------------- 5.1: NF4

def _nf4_tensors(seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    outlier = torch.randn(48, 64, generator=g) * 0.02
    outlier[7, 11] = 0.9  # one large weight dominates its block's scale
    heavy = torch.distributions.StudentT(3.0).sample((40, 96)) * 0.01
    return [("normal 64x128", torch.randn(64, 128, generator=g) * 0.02),
            ("33x70, last block partial", torch.randn(33, 70, generator=g) * 0.05),
            ("an outlier", outlier), ("heavy-tailed", heavy)]


def _nf4_inputs(preset, secret):
    import torch

    from ..quantization import bnb_nf4_code, bnb_nf4_round_trip
    from .child import encode_tensor

    torch.manual_seed(secrets_.derived_seed("05_quantization_qlora/nf4_heavy", secret))
    to_quantize = _nf4_tensors(secrets_.derived_seed("05_quantization_qlora/nf4", secret))
    to_restore = _nf4_tensors(secrets_.derived_seed("05_quantization_qlora/nf4_restore", secret))
    key = {"quantize": [], "restore": []}
    for name, weight in to_quantize:
        idx, absmax, _ = bnb_nf4_round_trip(weight, 64)
        key["quantize"].append((name, weight.numel(), idx, absmax))
    restore_inputs = []
    for name, weight in to_restore:
        idx, absmax, restored = bnb_nf4_round_trip(weight, 64)
        restore_inputs.append({"indices": encode_tensor(idx.to(torch.int64)), "absmax": encode_tensor(absmax),
                               "shape": list(weight.shape)})
        key["restore"].append((name, restored))
    return {"code": encode_tensor(bnb_nf4_code()), "block_size": 64,
            "quantize": [encode_tensor(w) for _, w in to_quantize], "dequantize": restore_inputs}, key


def _nf4_judge(exercise, preset, inputs, key, data) -> Verdict:
    from .child import decode_tensor

    expect(isinstance(data, dict) and len(data.get("quantized", [])) == len(key["quantize"])
           and len(data.get("restored", [])) == len(key["restore"]), "nf4 functions gave no result for every tensor.")
    agreement, absmax_error, restore_diff, problems = 1.0, 0.0, 0.0, []
    for (name, n, want_idx, want_absmax), got in zip(key["quantize"], data["quantized"]):
        idx, absmax = decode_tensor(got["indices"]), decode_tensor(got["absmax"])
        if idx.numel() != n or absmax.numel() != want_absmax.numel():
            problems.append(f"{name}: expected {n} indices and {want_absmax.numel()} absmax values (one per block of 64, "
                            f"the last one partial), got {idx.numel()} and {absmax.numel()}")
            agreement, absmax_error = 0.0, float("inf")
            continue
        rel = float(((absmax.float() - want_absmax).abs() / want_absmax.abs().clamp_min(1e-12)).max())
        absmax_error = max(absmax_error, rel)
        share = float((idx.long() == want_idx.long()).float().mean())
        agreement = min(agreement, share)
        if share < exercise.thresholds["index_agreement"][1]:
            first = int((idx.long() != want_idx.long()).nonzero()[0])
            problems.append(f"{name}: {share:.2%} of indices equal bitsandbytes'; the first differs at weight {first}: "
                            f"got {int(idx[first])}, expected {int(want_idx[first])}")
    for (name, want), raw in zip(key["restore"], data["restored"]):
        restored = decode_tensor(raw)
        if tuple(restored.shape) != tuple(want.shape):
            problems.append(f"{name}: nf4_dequantize must return shape {tuple(want.shape)}, got {tuple(restored.shape)}")
            restore_diff = float("inf")
            continue
        restore_diff = max(restore_diff, float((restored.float() - want).abs().max()))
    metrics = {"index_agreement": agreement, "absmax_relative_error": absmax_error,
               "dequantize_max_difference": restore_diff, "tensors": len(key["quantize"]) + len(key["restore"])}
    return _failed_on(judge(exercise, "-", metrics, preset), problems, 3)


# ---------------------------------------------------------------- 6.1: the Bradley-Terry loss

BT_CASES = (  # (pairs, margins?, centring coefficient, what the case holds), the four unseen batches
    (8, False, None, "no margin or centring"),
    (5, True, None, "margins"),
    (6, False, 0.01, "reward centring"),
    (7, True, 0.05, "margins and reward centring"),
)


def _bt_inputs(preset, secret):
    """Four unseen batches: plain, with margins, with reward centring, with both; one pair far apart (a naive
    log(sigmoid) overflows there), so only a numerically stable loss matches."""
    import torch

    from .child import encode_tensor

    g = torch.Generator().manual_seed(secrets_.derived_seed("06_reward_models_rlhf/bradley_terry", secret))
    cases = []
    for size, margin, center, _ in BT_CASES:
        chosen, rejected = torch.randn(size, generator=g) * 2, torch.randn(size, generator=g) * 2
        rejected[0] = chosen[0] + 150.0  # a confident mistake: -log sigmoid(-150) is 150, not inf
        cases.append({"chosen": encode_tensor(chosen), "rejected": encode_tensor(rejected),
                      "margin": encode_tensor(torch.rand(size, generator=g) * 2) if margin else None, "center": center})
    return {"cases": cases}, None


def trl_bradley_terry(case: dict) -> dict:
    """TRL's RewardTrainer loss on a case, with its gradients with respect to the rewards."""
    from ..preferences import reward_trainer_loss
    from .child import decode_tensor

    chosen = decode_tensor(case["chosen"]).requires_grad_(True)
    rejected = decode_tensor(case["rejected"]).requires_grad_(True)
    margin = decode_tensor(case["margin"]) if case["margin"] is not None else None
    loss = reward_trainer_loss(chosen, rejected, margin, case["center"])
    loss.backward()
    return {"loss": loss.item(), "grad_chosen": chosen.grad, "grad_rejected": rejected.grad}


def _bt_judge(exercise, preset, inputs, key, results) -> Verdict:
    whats = [f"{what} ({size} pairs)" for size, *_, what in BT_CASES]
    return _loss_judge(exercise, preset, inputs["cases"], results, whats, "bradley_terry_loss", "TRL's RewardTrainer",
                       trl_bradley_terry, {"grad_chosen": "grad_chosen", "grad_rejected": "grad_rejected"})


# ---------------------------------------------------------------- 7.1: the DPO loss

DPO_CASES = ((8, 0.1), (5, 0.5), (6, 0.05), (7, 2.0))  # (pairs, beta) of the four unseen batches


def _dpo_inputs(preset, secret):
    """Four unseen batches of sequence log-probabilities (policy and reference, chosen and rejected) at four betas;
    in each, pair 0 is a confident mistake (the policy moved 400 nats the wrong way), where a naive
    log(sigmoid(x)) gives -inf at the larger betas."""
    import torch

    from .child import encode_tensor

    g = torch.Generator().manual_seed(secrets_.derived_seed("07_dpo/dpo_loss", secret))
    cases = []
    for size, beta in DPO_CASES:
        logps = {name: -(torch.rand(size, generator=g) * 30 + 1) for name in
                 ("ref_chosen", "ref_rejected")}
        logps["policy_chosen"] = (logps["ref_chosen"] + torch.randn(size, generator=g) * 2).clamp(max=-0.01)
        logps["policy_rejected"] = (logps["ref_rejected"] + torch.randn(size, generator=g) * 2).clamp(max=-0.01)
        logps["ref_chosen"][0], logps["policy_chosen"][0] = -5.0, -205.0
        logps["ref_rejected"][0], logps["policy_rejected"][0] = -210.0, -10.0
        cases.append({"beta": beta, **{name: encode_tensor(t) for name, t in logps.items()}})
    return {"cases": cases}, None


def trl_dpo(case: dict) -> dict:
    """TRL's DPOTrainer loss on a case (`dpo.dpo_trainer_loss`), its gradients with respect to the policy's
    log-probabilities, and each reply's implicit reward beta * (policy - reference), as the trainer computes it."""
    from ..dpo import dpo_trainer_loss
    from .child import decode_tensor

    chosen = decode_tensor(case["policy_chosen"]).requires_grad_(True)
    rejected = decode_tensor(case["policy_rejected"]).requires_grad_(True)
    ref_chosen, ref_rejected = decode_tensor(case["ref_chosen"]), decode_tensor(case["ref_rejected"])
    loss, metrics = dpo_trainer_loss(chosen, rejected, ref_chosen, ref_rejected, beta=case["beta"])
    loss.backward()
    beta = case["beta"]
    return {"loss": loss.item(), "grad_chosen": chosen.grad, "grad_rejected": rejected.grad,
            "chosen_rewards": beta * (chosen.detach() - ref_chosen), "rejected_rewards": beta * (rejected.detach() - ref_rejected),
            "trl_rewards": (metrics["rewards/chosen"], metrics["rewards/rejected"])}


def _dpo_judge(exercise, preset, inputs, key, results) -> Verdict:
    def logged_means(want, tensors):  # the rewards' means are what DPOTrainer logs as rewards/chosen and rewards/rejected
        return {part: abs(float(tensors[part].mean()) - logged) / max(1.0, abs(logged))
                for part, logged in zip(("chosen_rewards", "rejected_rewards"), want["trl_rewards"]) if tensors[part].numel()}

    whats = [f"beta {beta}, {size} pairs" for size, beta in DPO_CASES]
    parts = {name: name for name in ("grad_chosen", "grad_rejected", "chosen_rewards", "rejected_rewards")}
    return _loss_judge(exercise, preset, inputs["cases"], results, whats, "dpo_loss", "TRL's DPOTrainer", trl_dpo, parts,
                       relative=("chosen_rewards", "rejected_rewards"), extra=logged_means)


# ---------------------------------------------------------------- 8.1: GRPO's group-relative advantage

GRPO_CASES = (  # (groups, generations, weights, what the case holds), the four unseen batches
    (2, 4, (1.0,), "a checker's 0/1 rewards, one group all right"),
    (3, 8, (0.2, 1.0), "two reward functions, weighted"),
    (2, 4, (1.0, 0.5), "a None reward and a completion no function scores"),
    (4, 2, (1.0, -0.5, 2.0), "groups of two, three functions, a negative weight"),
)


def _grpo_inputs(preset, secret):
    """Four unseen batches of rewards [completions, functions] with their weights and group size (NaN: a function
    that returned None), each holding what TRL's advantage treats specially: a tied group (zero advantage), a
    None, an unscorable completion, a negative weight."""
    import torch

    from .child import encode_tensor

    g = torch.Generator().manual_seed(secrets_.derived_seed("08_grpo/group_advantages", secret))
    cases = []
    for index, (groups, generations, weights, _) in enumerate(GRPO_CASES):
        n = groups * generations
        if index == 0:
            rewards = (torch.rand(n, 1, generator=g) > 0.6).float()
            rewards[:generations] = 1.0  # the first prompt's replies all right: no gradient
            rewards[generations:generations + 2] = torch.tensor([[1.0], [0.0]])  # the other group is not tied
        else:
            rewards = torch.round(torch.randn(n, len(weights), generator=g) * 1000) / 1000
        if index == 2:
            rewards[1, 0] = float("nan")  # one function said nothing about this reply
            rewards[5, :] = float("nan")  # no function scored this one
        cases.append({"rewards": encode_tensor(rewards), "weights": list(weights), "num_generations": generations})
    return {"cases": cases}, None


def _grpo_judge(exercise, preset, inputs, key, results) -> Verdict:
    from ..grpo import trl_group_advantages
    from .child import decode_tensor

    cases = inputs["cases"]
    expect(isinstance(results, list) and len(results) == len(cases), "group_advantages gave no result for every batch.")
    worst, problems = 0.0, []
    for case, got, (_, _, _, what) in zip(cases, results, GRPO_CASES):
        want = trl_group_advantages(decode_tensor(case["rewards"]), case["weights"], case["num_generations"])
        try:  # the child's answer is data from learner code: read it defensively
            tensor = decode_tensor(got).reshape(-1) if decode_tensor(got).numel() == want.numel() else None
        except (TypeError, ValueError, RuntimeError, OverflowError) as error:
            raise LearnerCodeError(f"group_advantages' result for the batch with {what} could not be read: {error}")
        if tensor is None:
            problems.append(f"batch with {what}: expected {want.numel()} advantages (one per completion), got "
                            f"{list(decode_tensor(got).shape)}")
            worst = float("inf")
            continue
        difference = float((tensor - want).abs().max())
        difference = difference if difference == difference else float("inf")  # NaN never passes
        worst = max(worst, difference)
        if not difference <= exercise.thresholds["max_difference"][1]:
            problems.append(f"batch with {what}: advantages differ from GRPOTrainer's by up to {difference:.3g}")
    return _failed_on(judge(exercise, "-", {"max_difference": worst, "batches": len(cases)}, preset), problems)


# ---------------------------------------------------------------- 9.1: the distillation loss

DISTILLATION_CASES = (  # (rows, vocabulary, temperature, alpha, logit scale, what the case holds)
    (6, 40, 1.0, 0.5, 3.0, "T 1, alpha 0.5"),
    (5, 64, 2.0, 0.5, 3.0, "T 2 (the T² factor)"),
    (8, 50, 4.0, 0.9, 5.0, "T 4, alpha 0.9"),
    (4, 30, 2.0, 1.0, 60.0, "soft targets alone, logits in the hundreds (a naive softmax overflows)"),
    (7, 32, 0.5, 0.0, 3.0, "labels alone (alpha 0)"),
)


def _distillation_inputs(preset, secret):
    """Five unseen batches of student and teacher logits [rows, vocabulary] with a label per row."""
    import torch

    from .child import encode_tensor

    g = torch.Generator().manual_seed(secrets_.derived_seed("09_distillation/loss", secret))
    cases = []
    for rows, vocab, temperature, alpha, scale, _ in DISTILLATION_CASES:
        teacher = torch.randn(rows, vocab, generator=g) * scale
        student = teacher * 0.5 + torch.randn(rows, vocab, generator=g) * scale
        labels = torch.randint(0, vocab, (rows,), generator=g)
        cases.append({"student": encode_tensor(student), "teacher": encode_tensor(teacher), "labels": labels.tolist(),
                      "temperature": temperature, "alpha": alpha})
    return {"cases": cases}, None


def library_distillation_loss(case: dict) -> dict:
    """The loss by PyTorch's `kl_div` and `cross_entropy` (`distill.distillation_loss`) on a case, and its gradient
    with respect to the student's logits."""
    import torch

    from ..distill import distillation_loss
    from .child import decode_tensor

    student = decode_tensor(case["student"]).requires_grad_(True)
    loss = distillation_loss(student, decode_tensor(case["teacher"]), torch.tensor(case["labels"]),
                             case["temperature"], case["alpha"])
    loss.backward()
    return {"loss": loss.item(), "grad_student": student.grad}


def _distillation_judge(exercise, preset, inputs, key, results) -> Verdict:
    return _loss_judge(exercise, preset, inputs["cases"], results, [c[-1] for c in DISTILLATION_CASES],
                       "distillation_loss", "kl_div + cross_entropy", library_distillation_loss,
                       {"gradient": "grad_student"})


def _loss_judge(exercise, preset, cases, results, whats, function: str, library_name: str, library, parts: dict,
                relative: tuple = (), extra: Callable | None = None) -> Verdict:
    """A loss exercise's verdict (6.1, 7.1, 9.1, 10.1): each case's loss (relative to max(1, |loss|)) and tensors
    (`parts`: name in the message -> key of the tensor in the child's answer and in `library(case)`'s; those named
    in `relative` relative to max(1, their largest magnitude), the others absolute) against the library's.
    `extra(want, tensors)` may add differences of its own (the larger one counts)."""
    from .child import decode_tensor

    expect(isinstance(results, list) and len(results) == len(cases), f"{function} gave no result for every batch.")
    worst, problems = 0.0, []
    for case, got, what in zip(cases, results, whats, strict=True):
        want = library(case)  # the grader's own numbers: a fault here is the grader's, not the learner's
        scales = {name: max(1.0, float(want[part].abs().max())) if name in relative else 1.0 for name, part in parts.items()}
        try:  # the child's answer is data from learner code: read it defensively
            learner_loss = float(got["loss"])
            tensors = {name: decode_tensor(got[part]).double() for name, part in parts.items()}
            diffs = {"loss": abs(learner_loss - want["loss"]) / max(1.0, abs(want["loss"]))}
            for name, tensor in tensors.items():
                diffs[name] = (float((tensor - want[parts[name]].double()).abs().max()) / scales[name]
                               if tensor.shape == want[parts[name]].shape else float("inf"))
        except (KeyError, TypeError, ValueError, RuntimeError, OverflowError) as error:
            raise LearnerCodeError(f"{function}'s result for the batch with {what} could not be read: {error}")
        for name, value in (extra(want, tensors) if extra else {}).items():  # on tensors already read as float64
            diffs[name] = max(diffs[name], value if value == value else float("inf"))
        diffs = {k: (v if v == v else float("inf")) for k, v in diffs.items()}  # NaN never passes
        worst = max(worst, *diffs.values())
        bad = [k for k, v in diffs.items() if not v <= exercise.thresholds["max_difference"][1]]
        if bad:
            problems.append(f"batch with {what}: {', '.join(bad)} differ from {library_name}'s (loss "
                            f"{learner_loss:.4g}, the library's {want['loss']:.4g})")
    return _failed_on(judge(exercise, "-", {"max_difference": worst, "batches": len(cases)}, preset), problems)


# ---------------------------------------------------------------- 10.1: the in-batch-negatives loss (InfoNCE)

INFO_NCE_CASES = (  # (queries, hard negatives per query, dimension, scale, what the case holds)
    (6, 0, 16, 20.0, "pairs only"),
    (5, 1, 24, 20.0, "one hard negative per query"),
    (4, 2, 12, 50.0, "two hard negatives per query, scale 50"),
    (8, 0, 32, 5.0, "rows of very different lengths, scale 5"),
)


def _info_nce_inputs(preset, secret):
    """Four unseen batches of embeddings: queries [B, d] and documents [B x (1 + negatives), d] (the positives, then
    each query's hard negatives), each positive near its query, the rows' lengths far from 1."""
    import torch

    from .child import encode_tensor

    g = torch.Generator().manual_seed(secrets_.derived_seed("10_embedding_fine_tuning/info_nce", secret))
    cases = []
    for index, (n, negatives, dim, scale, _) in enumerate(INFO_NCE_CASES):
        queries = torch.randn(n, dim, generator=g) * 3
        documents = torch.cat([queries + torch.randn(n, dim, generator=g) * 2]
                              + [queries + torch.randn(n, dim, generator=g) * 3 for _ in range(negatives)])
        if index == 3:  # a row 100 times longer than another: only normalised similarities agree
            queries[0] *= 100
            documents[1] *= 0.01
        cases.append({"queries": encode_tensor(queries), "documents": encode_tensor(documents), "scale": scale})
    return {"cases": cases}, None


def library_info_nce(case: dict) -> dict:
    """sentence-transformers' `MultipleNegativesRankingLoss` (its defaults: cosine similarity, one query-to-document
    softmax) on a case, and its gradients with respect to the queries and the documents."""
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    from .child import decode_tensor

    queries = decode_tensor(case["queries"]).requires_grad_(True)
    documents = decode_tensor(case["documents"]).requires_grad_(True)
    n = len(queries)
    columns = [queries] + list(documents.split(n))
    loss = MultipleNegativesRankingLoss(None, scale=case["scale"]).compute_loss_from_embeddings(columns, None)
    loss.backward()
    return {"loss": loss.item(), "grad_queries": queries.grad, "grad_documents": documents.grad}


def _info_nce_judge(exercise, preset, inputs, key, results) -> Verdict:
    return _loss_judge(exercise, preset, inputs["cases"], results, [c[-1] for c in INFO_NCE_CASES], "info_nce_loss",
                       "MultipleNegativesRankingLoss", library_info_nce,
                       {"grad_queries": "grad_queries", "grad_documents": "grad_documents"})


CHECKS = {
    "decision_rules_tests": FunctionCheck("decide", True, _decision_inputs, _decision_judge),
    "static_bytes_tests": FunctionCheck("static_bytes", True, _static_inputs, _static_judge),
    "cleaning_tests": FunctionCheck("clean", True, _cleaning_inputs, _cleaning_judge),
    "sft_label_mask_tests": FunctionCheck("label_mask", False, _label_mask_inputs, _label_mask_judge),
    "lora_layer_tests": FunctionCheck("lora_layer", False, _lora_inputs, _lora_judge),
    "nf4_tests": FunctionCheck("nf4", False, _nf4_inputs, _nf4_judge),
    "bradley_terry_tests": FunctionCheck("bradley_terry", False, _bt_inputs, _bt_judge),
    "dpo_loss_tests": FunctionCheck("dpo_loss", False, _dpo_inputs, _dpo_judge),
    "grpo_advantage_tests": FunctionCheck("group_advantages", False, _grpo_inputs, _grpo_judge),
    "distillation_loss_tests": FunctionCheck("distillation_loss", False, _distillation_inputs, _distillation_judge),
    "info_nce_tests": FunctionCheck("info_nce", False, _info_nce_inputs, _info_nce_judge),
}


def run_check(exercise: Exercise, preset, secret: int, call_learner: Callable) -> Verdict:
    """Build the inputs, get the learner's data through `call_learner(op, inputs, secret_inputs)`, judge it."""
    check = CHECKS[exercise.grade_id]
    inputs, key = check.inputs(preset, secret)
    try:
        data = call_learner(check.op, inputs, check.secret_inputs)
        return check.judge(exercise, preset, inputs, key, data)
    except LearnerCodeError as error:
        return failed(exercise, "-", str(error))
