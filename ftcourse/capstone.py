"""The LoRA capstone (notebook 04): a task of the learner's own design, drawn from their generator.

The learner writes `make_example(rng) -> (prompt, answer)`. Training and public validation examples
come from public seeds; the grader draws its held-out examples from the same generator with a seed the
learner never sees, in its own process, and keeps only those that are neither exact nor near-duplicates
of a training example.
"""

from __future__ import annotations

import inspect
import json
import random
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

from .data_quality import char_ngrams, jaccard, normalize_text
from .tasks import Example

CAPSTONE_TRAIN_SEED = 4040
CAPSTONE_VALIDATION_SEED = 4141
MIN_TRAIN_EXAMPLES = 1000
MAX_ANSWER_CHARS = 80
NEAR_DUPLICATE_JACCARD = 0.7  # character 5-gram Jaccard of normalised prompts (notebook 02's measure)
DRAWS_PER_EXAMPLE = 20  # a generator gets this many tries per distinct example before we give up


class TaskError(ValueError):
    """A generator or dataset that the capstone cannot use, with what was expected."""


def as_example(item, where: str) -> Example:
    """An `Example` from what a generator returned: an Example or a (prompt, answer) pair of strings."""
    if isinstance(item, Example):
        prompt, answer = item.prompt, item.answer
    elif isinstance(item, (tuple, list)) and len(item) == 2:
        prompt, answer = item
    else:
        raise TaskError(f"{where}: make_example must return (prompt, answer), two strings; got {type(item).__name__}.")
    if not isinstance(prompt, str) or not isinstance(answer, str):
        raise TaskError(f"{where}: prompt and answer must be strings; got {type(prompt).__name__} and {type(answer).__name__}.")
    if not prompt.strip() or not answer.strip():
        raise TaskError(f"{where}: prompt and answer must not be empty; got prompt={prompt[:40]!r}, answer={answer!r}.")
    if "\n" in answer.strip() or len(answer) > MAX_ANSWER_CHARS or answer != answer.strip():
        raise TaskError(f"{where}: the answer must be one line of at most {MAX_ANSWER_CHARS} characters without "
                        f"surrounding spaces (exact match compares the reply's first line); got {answer!r}.")
    return Example(prompt, answer)


def draw_task(make_example: Callable, n: int, seed: int, exclude: Sequence[Example] = ()) -> list[Example]:
    """`n` examples with distinct prompts from `make_example(random.Random(seed))`, none of them in `exclude`.

    Raises TaskError when the generator repeats itself so much that `n` distinct examples do not come
    out of `DRAWS_PER_EXAMPLE * n` draws: the task's space is too small to hold out anything.
    """
    rng = random.Random(seed)
    taken = {e.prompt for e in exclude}
    examples: dict[str, Example] = {}
    for draw in range(DRAWS_PER_EXAMPLE * n):
        if len(examples) == n:
            break
        example = as_example(make_example(rng), f"draw {draw} (seed {seed})")
        if example.prompt not in taken:
            examples.setdefault(example.prompt, example)
    if len(examples) < n:
        raise TaskError(f"make_example gave only {len(examples)} distinct new prompts in {DRAWS_PER_EXAMPLE * n} draws "
                        f"(seed {seed}); a capstone task needs room for {n}. Vary the prompts more (more values, "
                        "more phrasings), and use the rng argument for every random choice.")
    return list(examples.values())


class NearDuplicateIndex:
    """Training prompts grouped by answer, to find an example that restates a training example."""

    def __init__(self, train: Sequence[Example]):
        self.prompts = {normalize_text(e.prompt) for e in train}
        self.by_answer: dict[str, list[set]] = {}
        for e in train:
            self.by_answer.setdefault(e.answer, []).append(char_ngrams(e.prompt))

    def overlaps(self, example: Example) -> bool:
        """Exact (after normalisation) or near-duplicate of a training example with the same answer."""
        if normalize_text(example.prompt) in self.prompts:
            return True
        grams = char_ngrams(example.prompt)
        return any(jaccard(grams, other) >= NEAR_DUPLICATE_JACCARD for other in self.by_answer.get(example.answer, ()))


def capstone_splits(make_example: Callable, n_train: int, n_eval: int, heldout_seed: int | None = None) -> dict:
    """Train and validation from public seeds; with `heldout_seed`, the grader's held-out split.

    Evaluation splits are drawn with their own seed, then examples that overlap training are removed;
    `overlap_<split>` records the share removed (a task with little room repeats its training set).
    """
    train = draw_task(make_example, n_train, CAPSTONE_TRAIN_SEED)
    index = NearDuplicateIndex(train)
    splits: dict = {"train": train}
    seeds = {"validation": CAPSTONE_VALIDATION_SEED} | ({"heldout": heldout_seed} if heldout_seed is not None else {})
    for split, seed in seeds.items():
        candidates = draw_task(make_example, 2 * n_eval, seed)
        kept = [e for e in candidates if not index.overlaps(e)]
        splits[f"overlap_{split}"] = 1 - len(kept) / len(candidates)
        splits[split] = kept[:n_eval]
        if len(splits[split]) < n_eval // 2:
            raise TaskError(f"Only {len(kept)} of {len(candidates)} {split} examples differ from the training set; "
                            "the task repeats itself. Make its space much larger than the training set.")
    return splits


def task_report(examples: Sequence[Example]) -> dict:
    """What makes a task gradeable: distinct answers, the most common answer's share, lengths."""
    answers = Counter(e.answer for e in examples)
    answer, count = answers.most_common(1)[0]
    return {"examples": len(examples), "distinct_answers": len(answers), "top_answer": answer,
            "top_answer_share": count / len(examples),
            "mean_prompt_chars": sum(len(e.prompt) for e in examples) / len(examples)}


def save_capstone(make_example: Callable, train: Sequence[Example], artifacts: str | Path) -> Path:
    """Save the generator's source and the training set beside the adapter; the grader reads both."""
    artifacts = Path(artifacts)
    artifacts.mkdir(parents=True, exist_ok=True)
    try:
        source = inspect.getsource(make_example)
    except (OSError, TypeError) as error:
        raise TaskError(f"Could not read the source of make_example ({error}); define it with `def` in a cell.") from None
    try:  # the grader runs this source on its own: everything it needs must be inside the function
        as_example(load_generator(source)(random.Random(0)), "make_example run from its saved source")
    except NameError as error:
        raise TaskError(f"make_example uses a name defined outside the function ({error}); the grader runs the function "
                        "on its own, so move word lists and imports inside its body.") from None
    (artifacts / "task.py").write_text(source)
    with open(artifacts / "train.jsonl", "w") as f:
        for e in train:
            f.write(json.dumps({"prompt": e.prompt, "answer": e.answer}, ensure_ascii=False) + "\n")
    return artifacts


def load_generator(source: str) -> Callable:
    """`make_example` from its saved source, executed in a fresh namespace (the grader's side)."""
    namespace: dict = {"__name__": "__capstone_task__", "random": random, "Example": Example}
    exec(compile(source, "<capstone task.py>", "exec"), namespace)
    if not callable(namespace.get("make_example")):
        raise TaskError("task.py does not define make_example(rng).")
    return namespace["make_example"]


def load_train_file(path: str | Path) -> list[Example]:
    """The saved training set, each row checked (row number and field named on error)."""
    examples = []
    for row, line in enumerate(Path(path).read_text().splitlines(), start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise TaskError(f"{path} row {row}: not JSON ({error.msg}).") from None
        if not isinstance(record, dict) or set(record) != {"prompt", "answer"}:
            raise TaskError(f"{path} row {row}: expected an object with 'prompt' and 'answer', got {line[:60]!r}.")
        examples.append(as_example((record["prompt"], record["answer"]), f"{path} row {row}"))
    return examples


def max_answer_tokens(tokenizer, examples: Sequence[Example]) -> int:
    """Tokens generation needs for the longest answer, plus the end-of-turn token and slack."""
    return max(len(tokenizer(e.answer, add_special_tokens=False)["input_ids"]) for e in examples) + 3
