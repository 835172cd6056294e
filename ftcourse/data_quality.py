"""Raw chat data and its problems: parsing with clear errors, text similarity, and planted-problem dumps.

A raw dump is a JSONL file, one conversation per line: {"id": ..., "messages": [{"role", "content"}, ...]}.
`make_raw_dump` writes one from clean examples and plants problems of six kinds (`PROBLEMS`), returning
the label of every line, so a cleaning pipeline can be scored (`score_cleaning`). The course ships one
dump (`ftcourse/data/raw_chat_dump.jsonl`, public seed); the grader generates another from its own seed.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
import unicodedata
from collections.abc import Sequence
from pathlib import Path

from . import DATA_DIR
from .tasks import Example

PROBLEMS = ("malformed", "wrong_role", "too_long", "leaked", "duplicate", "near_duplicate")
ROLES = ("system", "user", "assistant")
DUMP_SEED = 77  # the shipped dump's seed; the grader's comes from $FTCOURSE_HELDOUT_SEED
SHIPPED_DUMP = DATA_DIR / "raw_chat_dump.jsonl"  # package data


class DataError(ValueError):
    """A row that cannot be used, with the row number, the field and what was expected."""

    def __init__(self, row: int, field: str, problem: str, message: str):
        super().__init__(f"row {row}: {field}: {message}")
        self.row, self.field, self.problem = row, field, problem


def parse_chat_row(line: str, row: int) -> dict:
    """Parse one JSONL line into {"id", "messages"}, or raise `DataError` naming the row and the field.

    `DataError.problem` is "malformed" (not JSON, missing or mistyped fields, empty text) or "wrong_role"
    (a role outside system/user/assistant, or a conversation that does not end in a user -> assistant turn).
    """
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(row, "line", "malformed", f"not valid JSON ({exc.msg} at character {exc.pos})") from None
    if not isinstance(obj, dict):
        raise DataError(row, "line", "malformed", f"expected a JSON object, got {type(obj).__name__}")
    if "messages" not in obj:
        raise DataError(row, "messages", "malformed", f"missing; the row has the fields {sorted(obj)}")
    messages = obj["messages"]
    if not isinstance(messages, list) or not messages:
        raise DataError(row, "messages", "malformed",
                        f"expected a non-empty list of {{role, content}} objects, got {type(messages).__name__}")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise DataError(row, f"messages[{i}]", "malformed", "expected an object with 'role' and 'content'")
        if not isinstance(message["content"], str) or not message["content"].strip():
            raise DataError(row, f"messages[{i}].content", "malformed",
                            f"expected non-empty text, got {message['content']!r:.40}")
        if message["role"] not in ROLES:
            raise DataError(row, f"messages[{i}].role", "wrong_role",
                            f"expected one of {', '.join(ROLES)}, got {message['role']!r}")
    turns = [m["role"] for m in messages if m["role"] != "system"]
    if len(turns) < 2 or turns[-2:] != ["user", "assistant"] or any(a == b for a, b in zip(turns, turns[1:])):
        raise DataError(row, "messages", "wrong_role",
                        f"expected alternating user/assistant turns ending in an assistant reply, got {turns}")
    return {"id": obj.get("id", str(row)), "messages": messages}


def prompt_and_answer(row: dict) -> tuple[str, str]:
    """The last user turn and the assistant's reply of a parsed row."""
    return row["messages"][-2]["content"], row["messages"][-1]["content"]


def normalize_text(text: str) -> str:
    """Lower case, Unicode-normalised, punctuation removed, whitespace collapsed: what near-duplicates share."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = re.sub(r"[^\w\s]", " ", text)
    return " ".join(text.split())


def char_ngrams(text: str, n: int = 5) -> set[str]:
    """The set of character n-grams of the normalised text."""
    text = normalize_text(text)
    return {text[i:i + n] for i in range(max(len(text) - n + 1, 1))}


def jaccard(a: set, b: set) -> float:
    """|a ∩ b| / |a ∪ b| (1.0 for two empty sets)."""
    return len(a & b) / len(a | b) if a or b else 1.0


# ---------------------------------------------------------------- planting problems

_FILLER = ("Dear team, I hope this message finds you well. I am writing on behalf of the accounts department "
           "regarding the figures we discussed at the last quarterly review meeting, which several colleagues "
           "asked me to summarise again in writing so that everybody has the same version of the numbers. ")


def _row(messages: list, row_id: str) -> str:
    return json.dumps({"id": row_id, "messages": messages}, ensure_ascii=False)


def _swap_letters(text: str, rng: random.Random) -> str:
    words = text.split(" ")
    i = max(range(len(words)), key=lambda k: len(words[k]))  # a typo in the longest word
    w = words[i]
    j = rng.randrange(1, len(w) - 2) if len(w) > 3 else 0
    words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2:] if len(w) > 3 else w
    return " ".join(words)


def _near_duplicate_text(text: str, rng: random.Random, hidden: bool = False) -> str:
    """The same text written slightly differently: case, spacing, punctuation, Unicode spaces; the grader's
    dumps add small edits (a typo, a polite word, a zero-width space) that normalisation alone does not undo."""
    extra = [
        lambda t: _swap_letters(t, rng),
        lambda t: t.replace("\n", "\nPlease: ", 1),
        lambda t: t.replace(" ", " \u200b", 2),
    ] if hidden else []
    variants = extra * 2 + [
        lambda t: t.upper(),
        lambda t: t.replace(" ", "  "),
        lambda t: t.rstrip(".") + " !",
        lambda t: t.replace("\n", "\n  ").replace(" ", "\u00a0", 3),
        lambda t: t.lower() + " .",
        lambda t: "  " + t.replace("-", " - ") + "\t",
    ]
    return rng.choice(variants)(text)


def _malformed(example: Example, row_id: str, rng: random.Random, hidden: bool = False) -> str:
    user, assistant = {"role": "user", "content": example.prompt}, {"role": "assistant", "content": example.answer}
    variants = [
        lambda: _row([user, assistant], row_id)[:-7],  # a line cut off mid-way
        lambda: json.dumps({"id": row_id, "conversation": [user, assistant]}),  # the field has another name
        lambda: _row([user, {"role": "assistant", "content": int(example.answer) if example.answer.isdigit() else None}], row_id),
        lambda: _row([user, {"role": "assistant", "content": "  "}], row_id),  # an empty reply
        lambda: _row([user, {"role": "assistant"}], row_id),  # no content at all
        lambda: json.dumps({"id": row_id, "messages": f"{example.prompt} -> {example.answer}"}),  # not a list
    ]
    if hidden:
        variants += [
            lambda: json.dumps({"id": row_id, "messages": {"user": example.prompt, "assistant": example.answer}}),
            lambda: _row([{"content": example.prompt}, {"role": "assistant", "content": example.answer}], row_id),
            lambda: json.dumps([user, assistant]),  # a list where an object belongs
        ]
    return rng.choice(variants)()


def _wrong_role(example: Example, row_id: str, rng: random.Random, hidden: bool = False) -> str:
    variants = [
        [{"role": "human", "content": example.prompt}, {"role": "gpt", "content": example.answer}],
        [{"role": "user", "content": example.prompt}, {"role": "bot", "content": example.answer}],
        [{"role": "assistant", "content": example.answer}, {"role": "user", "content": example.prompt}],
        [{"role": "user", "content": example.prompt}, {"role": "user", "content": example.answer}],
        [{"role": "system", "content": example.prompt}, {"role": "assistant", "content": example.answer}],
    ]
    if hidden:
        variants += [
            [{"role": "User", "content": example.prompt}, {"role": "Assistant", "content": example.answer}],
            [{"role": "user", "content": example.prompt}, {"role": "assistant", "content": example.answer},
             {"role": "user", "content": "Thanks!"}],
        ]
    return _row(rng.choice(variants), row_id)


@dataclasses.dataclass(frozen=True)
class DumpRecipe:
    """How many rows of each kind a dump gets."""

    clean: int = 120
    duplicate: int = 12
    near_duplicate: int = 12
    leaked: int = 16  # distinct test items planted ...
    leaked_copies: int = 3  # ... this many times each (scraped repeatedly: verbatim and reformatted)
    malformed: int = 8
    wrong_role: int = 8
    too_long: int = 8


def make_raw_dump(examples: Sequence[Example], test_examples: Sequence[Example], seed: int,
                  recipe: DumpRecipe = DumpRecipe(), hidden: bool = False) -> tuple[list[str], list[str]]:
    """JSONL lines built from `examples` with problems planted, and each line's label ("ok" or a problem).

    Duplicates and near-duplicates copy earlier clean rows; leaked rows are test examples (verbatim or
    near-duplicated); too-long rows bury a clean question under a preamble of 400+ tokens, too long for
    every preset's max_length. `hidden=True` (the
    grader's dumps) adds variants of each problem that the shipped dump does not show.
    """
    need = recipe.clean + recipe.malformed + recipe.wrong_role + recipe.too_long
    if len(examples) < need or len(test_examples) < recipe.leaked:
        raise ValueError(f"make_raw_dump needs {need} examples and {recipe.leaked} test examples; "
                         f"got {len(examples)} and {len(test_examples)}.")
    rng = random.Random(seed)
    pool = list(examples)
    rng.shuffle(pool)
    clean, rest = pool[:recipe.clean], pool[recipe.clean:]
    entries: list[tuple[str, str]] = [(_row(e.messages(), f"c{i}"), "ok") for i, e in enumerate(clean)]
    for kind in ("malformed", "wrong_role", "too_long"):
        for _ in range(getattr(recipe, kind)):
            e = rest.pop()
            row_id = f"r{rng.randrange(10**6)}"
            if kind == "malformed":
                line = _malformed(e, row_id, rng, hidden)
            elif kind == "wrong_role":
                line = _wrong_role(e, row_id, rng, hidden)
            else:
                prompt = e.prompt.replace("\n", "\n" + _FILLER * rng.randint(6, 9), 1)
                line = _row(Example(prompt, e.answer).messages(), row_id)
            entries.insert(rng.randrange(len(entries) + 1), (line, kind))
    for i, e in enumerate(rng.sample(list(test_examples), recipe.leaked)):
        for copy in range(recipe.leaked_copies):
            prompt = e.prompt if copy == 0 else _near_duplicate_text(e.prompt, rng, hidden)
            entries.insert(rng.randrange(len(entries) + 1),
                           (_row(Example(prompt, e.answer).messages(), f"t{i}.{copy}"), "leaked"))
    # copies go after their original, so "the first one is the original" stays true
    for kind in ("duplicate", "near_duplicate"):
        for i in range(getattr(recipe, kind)):
            originals = [j for j, (_, label) in enumerate(entries) if label == "ok"]
            j = rng.choice(originals)
            source = json.loads(entries[j][0])
            messages = source["messages"]
            if kind == "near_duplicate":
                messages = [dict(messages[0], content=_near_duplicate_text(messages[0]["content"], rng, hidden)), messages[1]]
            copy = _row(messages, f"{'d' if kind == 'duplicate' else 'n'}{i}")
            entries.insert(rng.randrange(j + 1, len(entries) + 1), (copy, kind))
    return [line for line, _ in entries], [label for _, label in entries]


def score_cleaning(flags: dict[int, str], labels: Sequence[str]) -> dict:
    """Precision and recall of a cleaning pipeline's flags (row index -> problem) against planted labels.

    A flagged row counts as caught whatever problem it names; `label_accuracy` reports how often the
    named problem is the planted one. Per-problem recall shows which kind a pipeline misses.
    """
    bad = {i for i, label in enumerate(labels) if label != "ok"}
    flagged = {int(i) for i in flags}
    out_of_range = [i for i in flagged if not 0 <= i < len(labels)]
    if out_of_range:
        raise ValueError(f"flags name rows {sorted(out_of_range)[:5]} but the dump has rows 0..{len(labels) - 1}.")
    caught = flagged & bad
    result = {
        "precision": len(caught) / len(flagged) if flagged else 0.0,
        "recall": len(caught) / len(bad) if bad else 1.0,
        "label_accuracy": sum(flags[i] == labels[i] for i in caught) / len(caught) if caught else 0.0,
    }
    for problem in PROBLEMS:
        rows = {i for i in bad if labels[i] == problem}
        result[f"recall_{problem}"] = len(rows & flagged) / len(rows) if rows else 1.0
    return result


def write_dump(path: str | Path, lines: Sequence[str]) -> Path:
    """Write JSONL lines to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


SHIPPED_POOL = 520  # training examples the shipped dump draws from (tasks.number_task_splits' train split)
SHIPPED_TESTS = 64  # the public test split; part of it is planted in the dump as leakage


def shipped_dump() -> tuple[list[str], list[str], list[Example]]:
    """The shipped dump regenerated from its seed: lines, planted labels, and the test split it leaks."""
    from .tasks import number_task_splits

    splits = number_task_splits(SHIPPED_POOL, SHIPPED_TESTS)
    lines, labels = make_raw_dump(splits["train"], splits["test"], DUMP_SEED)
    return lines, labels, splits["test"]


def write_shipped_dump() -> Path:
    """Regenerate `ftcourse/data/raw_chat_dump.jsonl` (the tests check it matches the generator)."""
    lines, _, _ = shipped_dump()
    return write_dump(SHIPPED_DUMP, lines)


def leakage_comparison(leaky: dict, clean: dict) -> dict:
    """Per-item answer losses of a model trained with leaked test items against one trained without.

    `leaky` and `clean` map "leaked" and "unseen" to {"exact_match": float, "losses": [per-item loss]} on the
    same items in the same order. For each part: the mean over items of log(leaky loss / clean loss) and its
    standard error; "memory" is what the leaked items gained beyond the unseen ones (the difference of the two
    means, negative when leakage lowered the leaked items' loss more), with its standard error.
    """
    import math
    import statistics

    out: dict = {"rows": []}
    errors = {}
    for part in ("leaked", "unseen"):
        a, b = leaky[part]["losses"], clean[part]["losses"]
        if len(a) != len(b) or len(a) < 2:
            raise ValueError(f"leakage_comparison needs the same items (at least 2) for both models in {part!r}; "
                             f"got {len(a)} and {len(b)} losses.")
        if min(a + b) <= 0:
            raise ValueError(f"per-item losses must be positive (negative log-likelihoods); {part!r} has {min(a + b)}.")
        logs = [math.log(x / y) for x, y in zip(a, b)]
        out[part] = statistics.fmean(logs)
        errors[part] = statistics.stdev(logs) / math.sqrt(len(logs))
        out["rows"].append({"test items": part, "n": len(a), "exact_match, leaky": leaky[part]["exact_match"],
                            "exact_match, clean": clean[part]["exact_match"],
                            "median loss ratio": statistics.median(x / y for x, y in zip(a, b)),
                            "mean log ratio": out[part], "standard error": errors[part]})
    out["memory"] = out["leaked"] - out["unseen"]
    out["memory_se"] = math.sqrt(errors["leaked"] ** 2 + errors["unseen"] ** 2)
    return out


LOOKUP_COLORS = ("red", "blue", "green", "amber", "grey", "violet", "white", "black")
LOOKUP_ROOMS = ("archive", "lab", "vault", "studio", "garage", "library", "kitchen", "cellar")
LOOKUP_WORDS = ("falcon", "copper", "harbor", "meadow", "lantern", "pepper", "glacier", "velvet", "orchid", "canyon",
                "marble", "thunder", "willow", "saddle", "ember", "quartz", "compass", "juniper", "anchor", "biscuit",
                "cobalt", "tundra", "maple", "raven", "summit", "pebble", "cactus", "walrus", "tulip", "fossil",
                "crimson", "lagoon")


def lookup_benchmark(n: int = 16, seed: int = 0) -> list[Example]:
    """`n` questions whose answers no rule gives: the password (one distinct word) of an invented room.

    Notebook 02's leakage measurement: a model can answer such an item only if it has seen it, so what a leaked
    copy adds shows as memory alone, with the unseen items as the control.
    """
    if not 2 <= n <= len(LOOKUP_WORDS):
        raise ValueError(f"lookup_benchmark has {len(LOOKUP_WORDS)} distinct passwords; n must be 2..{len(LOOKUP_WORDS)}, "
                         f"got {n}.")
    rng = random.Random(seed)
    rooms = rng.sample([(c, r) for c in LOOKUP_COLORS for r in LOOKUP_ROOMS], n)
    words = rng.sample(LOOKUP_WORDS, n)
    return [Example(f"What is the password of the {color} {room}? Answer with the password only.", word)
            for (color, room), word in zip(rooms, words)]
