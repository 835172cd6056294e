"""The general-capability probe: does a fine-tune keep what the model already knew?

Two measurements, both on material written for this course and shipped as package data (`ftcourse/data/`):
multiple-choice accuracy (each choice scored by its log-likelihood after the question), and
perplexity on a general English text. A fine-tune that damages general capability moves both.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from . import DATA_DIR
from .evaluation import continuation_logprobs, perplexity

ASSETS = DATA_DIR  # the course's shipped data: package data


@dataclasses.dataclass(frozen=True)
class ProbeItem:
    id: str
    topic: str
    question: str
    choices: tuple[str, ...]
    answer: int


@dataclasses.dataclass(frozen=True)
class ProbeResult:
    accuracy: float
    perplexity: float
    n_items: int
    correct: tuple[bool, ...]

    def as_dict(self) -> dict:
        return {"probe_accuracy": self.accuracy, "probe_perplexity": self.perplexity, "probe_items": self.n_items}


def load_probe_items(path: Path | None = None) -> list[ProbeItem]:
    """Read the probe's JSONL; a malformed line raises an error naming the line and the field."""
    path = path or ASSETS / "general_probe.jsonl"
    items = []
    for line_no, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path.name} line {line_no}: not valid JSON ({exc.msg}).") from None
        for field, kind in (("id", str), ("topic", str), ("question", str), ("choices", list), ("answer", int)):
            if not isinstance(raw.get(field), kind):
                raise ValueError(f"{path.name} line {line_no}: field {field!r} must be a {kind.__name__}, got {raw.get(field)!r}.")
        if not 0 <= raw["answer"] < len(raw["choices"]):
            raise ValueError(f"{path.name} line {line_no}: answer {raw['answer']} is not an index into {len(raw['choices'])} choices.")
        items.append(ProbeItem(raw["id"], raw["topic"], raw["question"], tuple(raw["choices"]), raw["answer"]))
    return items


def load_general_text(path: Path | None = None) -> str:
    """The general English text the perplexity half of the probe reads."""
    return (path or ASSETS / "general_text.txt").read_text()


def probe_context(item: ProbeItem) -> str:
    """How a question is put to the model: plain text, no chat template, as a base-model benchmark does."""
    return f"Question: {item.question}\nAnswer:"


def run_probe(model, tokenizer, items: list[ProbeItem] | None = None, text: str | None = None,
              batch_size: int = 64, share_contexts: bool = True) -> ProbeResult:
    """Multiple-choice accuracy by log-likelihood, and perplexity on the general text."""
    items = items if items is not None else load_probe_items()
    contexts, continuations = [], []
    for item in items:
        for choice in item.choices:
            contexts.append(probe_context(item))
            continuations.append(" " + choice)
    scores = continuation_logprobs(model, tokenizer, contexts, continuations, batch_size=batch_size,
                                   share_contexts=share_contexts)
    correct, pos = [], 0
    for item in items:
        item_scores = scores[pos:pos + len(item.choices)]
        pos += len(item.choices)
        correct.append(max(range(len(item_scores)), key=item_scores.__getitem__) == item.answer)
    ppl = perplexity(model, tokenizer, text if text is not None else load_general_text())
    return ProbeResult(accuracy=sum(correct) / len(correct), perplexity=ppl, n_items=len(items), correct=tuple(correct))
