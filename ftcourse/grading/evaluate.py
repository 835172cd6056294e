"""Evaluators of a trained outcome exercise: the metrics its thresholds are judged on.

`evaluate(notebook, artifacts, split, preset, secret, produced)` measures an adapter folder on a split:
`validation` (public: the learner's self-check) or `heldout` (generated here from a seed derived from the
instructor's secret). Under autograde the artifacts are the grader's own, trained from the learner's
choices (`grading.produce`), and `produced` carries what the grader knows first-hand (its step count,
the capstone's training draws); otherwise they are the kernel's, read defensively.
"""

from __future__ import annotations

from pathlib import Path

from ..evaluation import FEW_SHOT_K
from . import secret as secrets_
from .artifacts import ArtifactError, check_tree, read_json, recorded_count, recorded_double_quant, recorded_steps
from .learner import Cells, LearnerCodeError, call
from .references import cached
from .registry import outcome_exercise
from .verdict import Verdict, failed, judge

def split_seed(notebook: str, split: str, secret: int | None) -> int | None:
    """None for the public validation split; for held-out, a seed derived from the secret."""
    if split == "validation":
        return None
    if split != "heldout":
        raise ValueError(f"split must be 'validation' or 'heldout', got {split!r}.")
    if secret is None:
        raise secrets_.MissingSecret("The held-out split needs the instructor's secret.")
    return secrets_.derived_seed(f"{notebook}/heldout", secret)


def _signing(split: str, secret: int | None) -> int | None:
    return secret if split == "heldout" else None


def _cached_base_probe(preset, model, tokenizer, split: str, secret: int | None, quantized: bool = False,
                       double_quant: bool = False) -> dict:
    """The base model's general-probe result: it does not depend on the split, so one cached result serves every
    split and task (signed for the held-out split)."""
    from ..probe import run_probe

    def probe():
        with preset.autocast():
            return run_probe(model, tokenizer).as_dict()

    return dict(cached("base_probe", [preset.model, preset.bf16, preset.fp16, quantized, double_quant], probe,
                       _signing(split, secret)))


def _base_reference(preset, split: str, examples, secret: int | None, max_new_tokens: int = 12,
                    quantized: bool = False, double_quant: bool = False) -> dict:
    """The base model's probe result and exact match on the examples (the model loads only on a cache miss).

    `quantized`: the 4-bit NF4 base (QLoRA's), its scales double-quantized when `double_quant`.
    """

    def compute():
        from ..evaluation import exact_match
        from ..models import load_model_and_tokenizer, load_quantized_model, load_tokenizer

        if quantized:
            model = load_quantized_model(preset.model, preset.compute_dtype, double_quant=double_quant)
            tokenizer = load_tokenizer(preset.model)
        else:
            model, tokenizer = load_model_and_tokenizer(preset.model, preset.device)

        result = _cached_base_probe(preset, model, tokenizer, split, secret, quantized, double_quant)
        with preset.autocast():
            result["exact_match"], _ = exact_match(model, tokenizer, examples, batch_size=preset.eval_batch_size,
                                                   max_new_tokens=max_new_tokens)
        return result

    key = [preset.model, preset.bf16, preset.fp16, [e.prompt for e in examples], max_new_tokens,
           [e.answer for e in examples], quantized, double_quant]
    return cached(f"base_reference_{split}", key, compute, _signing(split, secret))


def _prompting_reference(preset, split: str, examples, shots, secret: int | None, max_new_tokens: int = 12) -> dict:
    """The base model's exact match on the examples, zero-shot and with a few-shot prompt (cached)."""

    def compute():
        from ..evaluation import exact_match
        from ..models import load_model_and_tokenizer

        model, tokenizer = load_model_and_tokenizer(preset.model, preset.device)
        with preset.autocast():
            zero, _ = exact_match(model, tokenizer, examples, batch_size=preset.eval_batch_size,
                                  max_new_tokens=max_new_tokens)
            few, _ = exact_match(model, tokenizer, examples, batch_size=preset.eval_batch_size, shots=shots,
                                 max_new_tokens=max_new_tokens)
        return {"zero_shot_exact_match": zero, "few_shot_exact_match": few}

    key = [preset.model, preset.bf16, preset.fp16, [e.prompt for e in examples], [e.answer for e in examples],
           [e.prompt for e in shots], [e.answer for e in shots], max_new_tokens]
    return cached(f"prompting_reference_{split}", key, compute, _signing(split, secret))


def _open_adapter(exercise, artifacts: Path, split: str) -> tuple[Path, Verdict | None]:
    adapter = artifacts / "adapter"
    if not (adapter / "adapter_config.json").is_file():
        return adapter, failed(exercise, split, f"No trained adapter found at {adapter}. Run the training cell; "
                                                "it must save the adapter there.")
    try:
        check_tree(artifacts)
    except ArtifactError as error:
        return adapter, failed(exercise, split, str(error))
    return adapter, None


def _steps(artifacts: Path, produced: dict | None) -> int:
    return produced["steps"] if produced else recorded_steps(artifacts)


def _with_probe(metrics: dict, probe: dict, base: dict) -> dict:
    return metrics | {
        "probe_accuracy": probe["probe_accuracy"], "base_probe_accuracy": base["probe_accuracy"],
        "probe_accuracy_drop": base["probe_accuracy"] - probe["probe_accuracy"],
        "probe_perplexity": probe["probe_perplexity"], "base_probe_perplexity": base["probe_perplexity"],
        "probe_perplexity_ratio": probe["probe_perplexity"] / base["probe_perplexity"],
    }


def _date_adapter(notebook: str, artifacts: Path, split: str, preset, secret, produced, quantized: bool) -> Verdict:
    """Exact match on the date task's split (and the general probe where graded), adapter on the (4-bit) base."""
    from ..evaluation import exact_match
    from ..models import load_adapter_model
    from ..probe import run_probe
    from ..tasks import date_task_splits

    exercise = outcome_exercise(notebook)
    adapter, early = _open_adapter(exercise, artifacts, split)
    if early:
        return early
    examples = date_task_splits(preset.n_train, preset.n_eval, heldout_seed=split_seed(notebook, split, secret))[split]
    try:  # the adapter is evaluated on the base it was trained on
        double_quant = quantized and (produced["double_quant"] if produced else recorded_double_quant(artifacts))
    except ArtifactError as error:
        return failed(exercise, split, str(error))
    base = _base_reference(preset, split, examples, secret, quantized=quantized, double_quant=double_quant)
    model, tokenizer = load_adapter_model(adapter, preset.device, base=preset.model, double_quant=double_quant,
                                          base_4bit_compute_dtype=preset.compute_dtype if quantized else None,
                                          merge=not quantized)
    with preset.autocast():
        em, _ = exact_match(model, tokenizer, examples, batch_size=preset.eval_batch_size)
        probe = run_probe(model, tokenizer).as_dict() if "probe_accuracy_drop" in exercise.thresholds else None
    metrics = {"exact_match": em, "base_exact_match": base["exact_match"], "steps": _steps(artifacts, produced),
               "n_examples": len(examples)}
    return judge(exercise, split, _with_probe(metrics, probe, base) if probe else metrics, preset)


def evaluate_plan(artifacts: Path, split: str, preset, secret, produced) -> Verdict:
    """01: the plan's memory measured here against the saved estimate; the adapter against the few-shot prompt."""
    from ..estimator import build_model_for_plan, load_plan, measure_training_memory
    from ..evaluation import exact_match
    from ..models import load_adapter_model
    from ..tasks import phone_task_splits

    exercise = outcome_exercise("01_when_to_fine_tune")
    adapter, early = _open_adapter(exercise, artifacts, split)
    if early:
        return early
    try:
        read_json(artifacts / "plan.json", "the plan")
        plan, record = load_plan(artifacts / "plan.json")
        estimate_total = float(record["estimate"]["total"])
    except (ArtifactError, ValueError, TypeError, KeyError) as error:
        return failed(exercise, split, f"Could not read the saved plan: {error}")
    if plan.method != "lora" or plan.autocast_dtype != preset.autocast_dtype:
        return failed(exercise, split, f"The plan must be method='lora' with autocast_dtype={preset.autocast_dtype!r} "
                                       f"(this preset's); got method={plan.method!r}, autocast_dtype={plan.autocast_dtype!r}.")
    splits = phone_task_splits(preset.n_train, preset.n_eval,
                               heldout_seed=split_seed("01_when_to_fine_tune", split, secret))
    measured = measure_training_memory(build_model_for_plan(plan, preset.model, preset.device), plan)
    prompting = _prompting_reference(preset, split, splits[split], splits["train"][:FEW_SHOT_K], secret)
    model, tokenizer = load_adapter_model(adapter, preset.device, base=preset.model, merge=True)
    with preset.autocast():
        em, _ = exact_match(model, tokenizer, splits[split], batch_size=preset.eval_batch_size)
    metrics = {
        "memory_estimate_error": abs(estimate_total - measured.total) / measured.total,
        "estimated_memory_gb": estimate_total / 1e9, "measured_memory_gb": measured.total / 1e9,
        "exact_match": em, "base_exact_match": prompting["zero_shot_exact_match"],
        "few_shot_exact_match": prompting["few_shot_exact_match"],
        "margin_over_few_shot": em - prompting["few_shot_exact_match"],
        "steps": _steps(artifacts, produced), "n_examples": len(splits[split]),
    }
    return judge(exercise, split, metrics, preset)


def evaluate_cleaned_sft(artifacts: Path, split: str, preset, secret, produced) -> Verdict:
    """02: words-to-digits exact match of the adapter trained on the cleaned dump."""
    from ..data_quality import SHIPPED_POOL
    from ..evaluation import exact_match
    from ..models import load_adapter_model
    from ..tasks import number_task_splits

    exercise = outcome_exercise("02_data_and_tooling")
    adapter, early = _open_adapter(exercise, artifacts, split)
    if early:
        return early
    examples = number_task_splits(SHIPPED_POOL, preset.n_eval,
                                  heldout_seed=split_seed("02_data_and_tooling", split, secret))[split]
    base = _base_reference(preset, split, examples, secret)
    model, tokenizer = load_adapter_model(adapter, preset.device, base=preset.model, merge=True)
    with preset.autocast():
        em, _ = exact_match(model, tokenizer, examples, batch_size=preset.eval_batch_size)
    metrics = {"exact_match": em, "base_exact_match": base["exact_match"], "steps": _steps(artifacts, produced),
               "n_examples": len(examples)}
    return judge(exercise, split, metrics, preset)


def capstone_draws(raw, n: int, where: str) -> list:
    """Examples from a child's draw, each checked: the learner's generator is untrusted."""
    from ..capstone import TaskError, as_example

    if not isinstance(raw, list) or len(raw) != n:
        raise LearnerCodeError(f"make_example's draw returned {len(raw) if isinstance(raw, list) else type(raw).__name__} "
                               f"examples, expected {n}.")
    try:
        examples = [as_example(item, f"{where} draw {i}") for i, item in enumerate(raw)]
    except TaskError as error:
        raise LearnerCodeError(str(error)) from None
    if len({e.prompt for e in examples}) != n:
        raise LearnerCodeError("make_example's draw repeated prompts.")
    return examples


def _capstone_split(artifacts: Path, split: str, preset, secret) -> tuple[list, list]:
    """(what was trained on, fresh candidates): the kernel's saved set, and draws from its saved generator."""
    from ..capstone import CAPSTONE_VALIDATION_SEED, TaskError, load_train_file

    for name in ("task.py", "train.jsonl"):
        path = artifacts / name
        if path.is_symlink() or not path.is_file() or path.stat().st_size > 50_000_000:
            raise LearnerCodeError(f"Missing or unusable {path}: save it with save_capstone(make_example, train, folder).")
    try:
        train = load_train_file(artifacts / "train.jsonl")
    except TaskError as error:
        raise LearnerCodeError(str(error)) from None
    seed = CAPSTONE_VALIDATION_SEED if split == "validation" else split_seed("04_lora", split, secret)
    cells = Cells({"capstone_task": (artifacts / "task.py").read_text()}, preset.name, 0)
    raw = call(cells, ["capstone_task"], "draw", {"n": 2 * preset.n_eval, "seed": seed}, secret_inputs=split == "heldout")
    return train, capstone_draws(raw, 2 * preset.n_eval, split)


def evaluate_capstone(artifacts: Path, split: str, preset, secret, produced) -> Verdict:
    """04: the learner's own task; held-out examples are fresh draws that repeat nothing trained on."""
    from ..capstone import NearDuplicateIndex, max_answer_tokens, task_report
    from ..evaluation import exact_match
    from ..models import load_adapter_model
    from ..probe import run_probe

    exercise = outcome_exercise("04_lora")
    adapter, early = _open_adapter(exercise, artifacts, split)
    if early:
        return early
    try:
        train, candidates = (produced["train"], produced["candidates"]) if produced else \
            _capstone_split(artifacts, split, preset, secret)
    except LearnerCodeError as error:
        return failed(exercise, split, f"Your task could not be drawn: {error}")
    index = NearDuplicateIndex(train)
    kept = [e for e in candidates if not index.overlaps(e)]
    overlap = 1 - len(kept) / len(candidates)
    examples = kept[:preset.n_eval]
    if len(examples) < preset.n_eval // 2:
        return failed(exercise, split, f"Only {len(kept)} of {len(candidates)} fresh draws differ from the training set: "
                                       + exercise.hints[0], {"overlap_with_train": overlap})
    model, tokenizer = load_adapter_model(adapter, preset.device, base=preset.model, merge=True)
    new_tokens = max_answer_tokens(tokenizer, examples)
    base = _base_reference(preset, f"capstone_{split}", examples, secret, max_new_tokens=new_tokens)
    # the instructed few-shot prompt: the base model shown your first training examples as earlier turns
    prompting = _prompting_reference(preset, f"capstone_{split}", examples, train[:FEW_SHOT_K], secret,
                                     max_new_tokens=new_tokens)
    with preset.autocast():
        em, _ = exact_match(model, tokenizer, examples, batch_size=preset.eval_batch_size, max_new_tokens=new_tokens)
        probe = run_probe(model, tokenizer).as_dict()
    metrics = {"train_examples": len(train), "overlap_with_train": overlap,
               "top_answer_share": task_report(examples)["top_answer_share"],
               "exact_match": em, "base_exact_match": base["exact_match"], "margin_over_base": em - base["exact_match"],
               "few_shot_exact_match": prompting["few_shot_exact_match"],
               "margin_over_few_shot": em - prompting["few_shot_exact_match"],
               "steps": _steps(artifacts, produced), "n_examples": len(examples)}
    return judge(exercise, split, _with_probe(metrics, probe, base), preset)


def evaluate_reward_model(artifacts: Path, split: str, preset, secret, produced) -> Verdict:
    """06: the reward model's pairwise accuracy by kind on the split's pairs (generated here: 24 of each graded
    kind, 9 of each other)."""
    from ..models import load_tokenizer
    from ..preferences import PAIR_KINDS
    from ..reward import EVAL_KINDS, REWARD_EVAL_PAIRS, load_reward_adapter, pairwise_accuracy, reward_pairs

    exercise = outcome_exercise("06_reward_models_rlhf")
    adapter, early = _open_adapter(exercise, artifacts, split)
    if early:
        return early
    try:
        model = load_reward_adapter(adapter, preset.model, preset.device)
    except (ValueError, OSError, RuntimeError) as error:
        return failed(exercise, split, f"The saved reward model could not be loaded: {str(error)[:300]}")
    pairs = reward_pairs(EVAL_KINDS, n_train=preset.n_train, split=split, n_eval=REWARD_EVAL_PAIRS,
                         heldout_seed=split_seed("06_reward_models_rlhf", split, secret),
                         seed=secrets_.derived_seed("06_reward_models_rlhf/pairs", secret) if split == "heldout" else 1)
    with preset.autocast():
        result = pairwise_accuracy(model, load_tokenizer(preset.model), pairs, batch_size=preset.eval_batch_size)
    metrics = {f"{kind}_accuracy": result["by_kind"][kind] for kind in PAIR_KINDS}
    metrics |= {"accuracy": result["accuracy"], "n_pairs": result["n_pairs"], "steps": _steps(artifacts, produced)}
    return judge(exercise, split, metrics, preset)


DPO_NEW_TOKENS = 16  # a greedy reply to a counting question: "There are 12 pears in total." is 8 tokens
GRPO_NEW_TOKENS = 32  # 08's replies: the longest completion a graded GRPO run may sample (GRPO_COMPLETION_TOKENS)


def _counting_questions(notebook: str, preset, split: str, secret):
    """07's and 08's evaluation questions: the split's counting questions, held out by the secret."""
    from ..preferences import preference_splits

    return preference_splits(preset.n_train, preset.n_eval, heldout_seed=split_seed(notebook, split, secret))[split]


def _base_judge_reference(preset, split: str, questions, secret: int | None, new_tokens: int = DPO_NEW_TOKENS) -> dict:
    """The base model's probe result and judge score on `questions` (greedy replies of at most `new_tokens`; cached
    like `_base_reference`)."""

    def compute():
        from ..models import load_model_and_tokenizer
        from ..rlhf import judge_replies, sample_replies

        model, tokenizer = load_model_and_tokenizer(preset.model, preset.device)

        result = _cached_base_probe(preset, model, tokenizer, split, secret)
        with preset.autocast():
            replies = sample_replies(model, tokenizer, questions, n=1, max_new_tokens=new_tokens, temperature=0,
                                     batch_size=preset.eval_batch_size)
        result |= {f"base_{k}": v for k, v in judge_replies(questions, replies).items() if k != "n"}
        return result

    key = [preset.model, preset.bf16, preset.fp16, [q.prompt for q in questions], [q.answer for q in questions],
           new_tokens]
    return cached(f"base_judge_reference_{split}", key, compute, _signing(split, secret))


def _judged_policy(notebook: str, artifacts: Path, split: str, preset, secret, produced, new_tokens: int):
    """A trained policy's greedy replies to the split's counting questions, judged, against the base model's on the
    same questions; the general probe against the base model's. (metrics, None) or (None, an early verdict)."""
    from ..models import load_adapter_model
    from ..probe import run_probe
    from ..rlhf import judge_replies, sample_replies

    adapter, early = _open_adapter(outcome_exercise(notebook), artifacts, split)
    if early:
        return None, early
    questions = _counting_questions(notebook, preset, split, secret)
    base = _base_judge_reference(preset, split, questions, secret, new_tokens)
    model, tokenizer = load_adapter_model(adapter, preset.device, base=preset.model, merge=True)
    with preset.autocast():
        replies = sample_replies(model, tokenizer, questions, n=1, max_new_tokens=new_tokens, temperature=0,
                                 batch_size=preset.eval_batch_size)
        probe = run_probe(model, tokenizer).as_dict()
    scores = judge_replies(questions, replies)
    metrics = {"judge": scores["judge"], "base_judge": base["base_judge"], "judge_gain": scores["judge"] - base["base_judge"],
               "right": scores["right"], "base_right": base["base_right"], "right_gain": scores["right"] - base["base_right"],
               "words": scores["words"], "steps": _steps(artifacts, produced), "n_questions": len(questions)}
    return _with_probe(metrics, probe, base), None


def evaluate_dpo(artifacts: Path, split: str, preset, secret, produced) -> Verdict:
    """07: the DPO policy's judge score on the split's questions against the base model's (`_judged_policy`)."""
    metrics, early = _judged_policy("07_dpo", artifacts, split, preset, secret, produced, DPO_NEW_TOKENS)
    return early or judge(outcome_exercise("07_dpo"), split, metrics, preset)


def evaluate_grpo(artifacts: Path, split: str, preset, secret, produced) -> Verdict:
    """08: the GRPO policy's share the task's checker accepts on the split's questions against the base model's
    (`_judged_policy`; the learner's reward functions play no part here)."""
    metrics, early = _judged_policy("08_grpo", artifacts, split, preset, secret, produced, GRPO_NEW_TOKENS)
    return early or judge(outcome_exercise("08_grpo"), split, metrics, preset)


def _embedding_questions(preset, split: str, secret):
    """10's evaluation questions: validation, or held-out questions drawn by the secret (`retrieval_splits`)."""
    from ..retrieval import retrieval_splits

    return retrieval_splits(heldout_seed=split_seed("10_embedding_fine_tuning", split, secret))[split]


def _base_retrieval_reference(preset, split: str, questions, secret: int | None) -> dict:
    """The shipped embedding model's MRR@10 and recall@k on `questions` (cached like `_base_reference`)."""

    def compute():
        from ..retrieval import load_embedding_model, retrieval_scores

        return retrieval_scores(load_embedding_model(preset.device, verify=True), questions)

    key = ["all-MiniLM-L6-v2", [q.text for q in questions], [q.doc_id for q in questions]]
    return cached(f"base_retrieval_reference_{split}", key, compute, _signing(split, secret))


def _texts(artifacts: Path, produced: dict | None) -> int:
    """Texts the run encoded: the grader's own count, else the kernel's record (missing: over any budget)."""
    return produced["texts"] if produced else recorded_count(artifacts, "texts")


def evaluate_embedding(artifacts: Path, split: str, preset, secret, produced) -> Verdict:
    """10: the fine-tuned embedding model's MRR@10 and recall@k on the split's questions against the whole runbook,
    beside the shipped model's on the same questions."""
    from ..retrieval import load_saved_embedding, retrieval_scores

    exercise = outcome_exercise("10_embedding_fine_tuning")
    try:
        check_tree(artifacts)
        model = load_saved_embedding(artifacts / "embedding", preset.device, verify=True)
    except (ArtifactError, FileNotFoundError, ValueError, OSError) as error:  # a changed shipped model raises
        return failed(exercise, split, f"{error} Run the training cell: it saves the weights there.")
    questions = _embedding_questions(preset, split, secret)
    base = _base_retrieval_reference(preset, split, questions, secret)
    scores = retrieval_scores(model, questions)
    metrics = {"mrr@10": scores["mrr@10"], "base_mrr@10": base["mrr@10"], "mrr_gain": scores["mrr@10"] - base["mrr@10"],
               **{k: v for k, v in scores.items() if k != "mrr@10"}, "base_recall@1": base["recall@1"],
               "texts": _texts(artifacts, produced), "steps": _steps(artifacts, produced),
               "n_questions": len(questions)}
    return judge(exercise, split, metrics, preset)


_TEACHERS: dict = {}  # (preset, sha256) -> (teacher, tokenizer, record): one load per grader process
_TRAINED: dict = {}  # preset -> the record of the teacher this process trained (both splits' records share it)
_LABELS_ONLY: dict = {}  # (preset, teacher's sha256) -> the labels-only student, trained once per grader process


def distill_teacher_dir(preset) -> Path:
    """Where the grader keeps the teachers it trained, one folder per adapter hash (training is not bit-reproducible
    across processes: a record must find its own teacher, never another run's)."""
    from .references import references_dir

    return references_dir() / f"distill_teacher_{preset.name}"


def distill_teacher(preset, split: str, secret: int | None):
    """09's teacher, trained by the grader itself (`distill.course_teacher`, 03's recipe) and cached in the references
    folder; the record of its adapter's hash and its answers to the training prompts is the grader's own (signed
    for held-out), so a rewritten cached adapter is trained again, not trusted. Returns (teacher, tokenizer, record)."""
    from dataclasses import asdict

    from ..distill import course_teacher, teacher_setup

    import os
    import shutil

    root = distill_teacher_dir(preset)

    def compute():  # never a cached file's word: this process trains the teacher (once for both splits' records)
        if preset.name not in _TRAINED:
            training = root / f"training-{os.getpid()}"
            shutil.rmtree(training, ignore_errors=True)
            trained = course_teacher(preset, training, retrain=True, progress=False)[2]
            shutil.rmtree(training / "trainer", ignore_errors=True)
            final = root / trained["sha256"][:16]
            shutil.rmtree(final, ignore_errors=True)
            os.replace(training, final)
            _TRAINED[preset.name] = trained
        return _TRAINED[preset.name]

    key = [preset.model, preset.bf16, preset.fp16, preset.n_train, asdict(teacher_setup()), "weights and config hash"]
    record = cached("distill_teacher", key, compute, _signing(split, secret))
    if (preset.name, record["sha256"]) not in _TEACHERS:
        teacher, tokenizer, loaded = course_teacher(preset, root / record["sha256"][:16], sha256=record["sha256"],
                                                    progress=False)
        if loaded["sha256"] != record["sha256"]:  # the folder held another teacher: this process just trained one
            record = loaded  # (training is not bit-reproducible here), and grades with it and its own answers
        _TEACHERS[(preset.name, record["sha256"])] = (teacher, tokenizer, record)
    return _TEACHERS[(preset.name, record["sha256"])]


def _distill_examples(preset, split: str, secret):
    from ..tasks import date_task_splits

    return date_task_splits(preset.n_train, preset.n_eval,
                            heldout_seed=split_seed("09_distillation", split, secret))[split]


def _distill_references(preset, split: str, examples, secret: int | None) -> dict:
    """The teacher's exact match on `examples`, and that of the same student trained without the teacher on the same
    budget (`distill.labels_only_args`: the labelled prompts alone, the exercise's whole step budget), cached."""
    from ..distill import LABELLED, labels_only_args

    teacher, tokenizer, record = distill_teacher(preset, split, secret)
    budget = outcome_exercise("09_distillation").step_budget(preset)

    def compute():
        from ..distill import train_student
        from ..evaluation import exact_match
        from ..tasks import date_task_splits

        trained = (preset.name, record["sha256"])
        if trained not in _LABELS_ONLY:
            import tempfile

            with tempfile.TemporaryDirectory(prefix="ftcourse-labels-only-") as workdir:
                train = date_task_splits(preset.n_train, preset.n_eval)["train"][:LABELLED]
                _LABELS_ONLY[trained] = train_student(teacher, tokenizer, train, labels_only_args(preset, budget, workdir),
                                                      0.0, 0.0, preset, progress=False)[0]
        with preset.autocast():
            return {"teacher_exact_match": exact_match(teacher, tokenizer, examples, preset.eval_batch_size)[0],
                    "labels_only_exact_match": exact_match(_LABELS_ONLY[trained], tokenizer, examples,
                                                           preset.eval_batch_size)[0]}

    recipe = {k: str(v) for k, v in labels_only_args(preset, budget, "x").to_dict().items()
              if k not in ("output_dir", "logging_dir")}
    key = [preset.model, preset.bf16, preset.fp16, [e.prompt for e in examples], [e.answer for e in examples],
           recipe, LABELLED, record["sha256"]]
    return cached(f"distill_reference_{split}", key, compute, _signing(split, secret))


def evaluate_distillation(artifacts: Path, split: str, preset, secret, produced) -> Verdict:
    """09: the student's exact match on the split's dates, against the teacher's and against the same student trained
    on the labelled prompts alone for the same steps; the student is rebuilt from the grader's teacher and only its
    tensors are read from the artifacts."""
    from ..distill import load_student, parameter_count
    from ..evaluation import exact_match

    exercise = outcome_exercise("09_distillation")
    try:  # the artifacts first: a missing student is named before the teacher loads
        check_tree(artifacts)
        if not (artifacts / "student" / "model.safetensors").is_file():
            raise FileNotFoundError(f"No student weights in {artifacts / 'student'}.")
        teacher, tokenizer, _ = distill_teacher(preset, split, secret)
        student = load_student(teacher, artifacts / "student")
    except (ArtifactError, FileNotFoundError, ValueError, OSError) as error:
        return failed(exercise, split, f"{error} Run the training cell: it saves the student there.")
    examples = _distill_examples(preset, split, secret)
    references = _distill_references(preset, split, examples, secret)
    with preset.autocast():
        em, _ = exact_match(student, tokenizer, examples, batch_size=preset.eval_batch_size)
    metrics = {"exact_match": em, **references,
               "share_of_teacher": em / max(references["teacher_exact_match"], 1e-9),
               "gain_over_labels_only": em - references["labels_only_exact_match"],
               "params_share": parameter_count(student) / parameter_count(teacher),
               "layers": student.config.num_hidden_layers,
               "steps": _steps(artifacts, produced), "n_examples": len(examples)}
    return judge(exercise, split, metrics, preset)


EVALUATORS = {
    "01_when_to_fine_tune": evaluate_plan,
    "02_data_and_tooling": evaluate_cleaned_sft,
    "03_sft": lambda a, s, p, k, d: _date_adapter("03_sft", a, s, p, k, d, quantized=False),
    "04_lora": evaluate_capstone,
    "05_quantization_qlora": lambda a, s, p, k, d: _date_adapter("05_quantization_qlora", a, s, p, k, d, quantized=True),
    "06_reward_models_rlhf": evaluate_reward_model,
    "07_dpo": evaluate_dpo,
    "08_grpo": evaluate_grpo,
    "09_distillation": evaluate_distillation,
    "10_embedding_fine_tuning": evaluate_embedding,
}


def evaluate(notebook: str, artifacts: Path, split: str, preset, secret: int | None, produced: dict | None = None) -> Verdict:
    """Measure `artifacts` of the notebook's outcome exercise on `split` and judge the metrics."""
    if notebook not in EVALUATORS:
        raise KeyError(f"No evaluator for {notebook!r}; known: {', '.join(EVALUATORS)}.")
    return EVALUATORS[notebook](Path(artifacts), split, preset, secret, produced)


def warm_references(preset, secret: int | None) -> None:
    """Compute and cache the base model's references of every fixed task (validation, and held-out with `secret`)."""
    from ..data_quality import SHIPPED_POOL
    from ..tasks import date_task_splits, number_task_splits, phone_task_splits

    for split in ("validation", "heldout") if secret is not None else ("validation",):
        date = {nb: date_task_splits(preset.n_train, preset.n_eval, heldout_seed=split_seed(nb, split, secret))[split]
                for nb in ("03_sft", "05_quantization_qlora")}
        _base_reference(preset, split, date["03_sft"], secret)
        _base_reference(preset, split, date["05_quantization_qlora"], secret, quantized=True, double_quant=True)
        phone = phone_task_splits(preset.n_train, preset.n_eval,
                                  heldout_seed=split_seed("01_when_to_fine_tune", split, secret))
        _prompting_reference(preset, split, phone[split], phone["train"][:FEW_SHOT_K], secret)
        numbers = number_task_splits(SHIPPED_POOL, preset.n_eval,
                                     heldout_seed=split_seed("02_data_and_tooling", split, secret))
        _base_reference(preset, split, numbers[split], secret)
        _base_judge_reference(preset, split, _counting_questions("07_dpo", preset, split, secret), secret)
        _base_judge_reference(preset, split, _counting_questions("08_grpo", preset, split, secret), secret,
                              GRPO_NEW_TOKENS)
        _base_retrieval_reference(preset, split, _embedding_questions(preset, split, secret), secret)
        _distill_references(preset, split, _distill_examples(preset, split, secret), secret)
