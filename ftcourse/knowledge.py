"""Knowledge a model cannot have: facts about fictional things, for notebook 01's measurement of fine-tuning
against retrieval.

`make_facts(n, seed)` writes `n` facts about invented organisations, people and ships (names built from
syllables, so no pretraining text holds them), each as a document sentence, a question and its short answer.
A team that holds such facts has the sentences (its documents), not question-answer pairs. Two ways to make a
model answer the questions: fine-tune it on the sentences, or retrieve the sentence that matches each
question with the shipped embedding model and put it in the prompt (`FactRetriever`, `retrieval_examples`).
`changed_facts` then changes some facts, as documents change.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence

from .tasks import Example

SYLLABLES = ("ka", "vor", "mi", "tel", "dra", "su", "nex", "lo", "ba", "quin", "thor", "es", "ri", "ven", "ul", "gar",
             "po", "zan", "fi", "dro", "me", "sel", "tu", "wyn")
KINDS = ("founded", "born", "crew")
RETRIEVAL_INSTRUCTION = "Answer the question with the answer only, using the note."


@dataclasses.dataclass(frozen=True)
class Fact:
    """One fact: the sentence a document states, the question that asks for it, the short answer."""

    subject: str
    kind: str  # "founded" (a year), "born" (a town), "crew" (a number)
    answer: str

    @property
    def statement(self) -> str:
        return {"founded": f"The {self.subject} was founded in {self.answer}.",
                "born": f"{self.subject} was born in the town of {self.answer}.",
                "crew": f"The ship {self.subject} sails with a crew of {self.answer}."}[self.kind]

    @property
    def question(self) -> str:
        return {"founded": f"In which year was the {self.subject} founded?",
                "born": f"In which town was {self.subject} born?",
                "crew": f"How many sailors are in the crew of the ship {self.subject}?"}[self.kind]

    def with_answer(self, answer: str) -> "Fact":
        return dataclasses.replace(self, answer=answer)


def _name(rng: random.Random, syllables: int) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(syllables)).capitalize()


def _answer(kind: str, rng: random.Random) -> str:
    if kind == "founded":
        return str(rng.randint(1620, 1990))
    if kind == "born":
        return _name(rng, 3)
    return str(rng.randint(12, 480))


def make_facts(n: int, seed: int) -> list[Fact]:
    """`n` facts with distinct subjects, the three kinds in turn."""
    if n < 1:
        raise ValueError(f"make_facts needs n >= 1, got {n}.")
    rng = random.Random(seed)
    facts, subjects = [], set()
    while len(facts) < n:
        kind = KINDS[len(facts) % len(KINDS)]
        subject = {"founded": f"{_name(rng, 3)} {rng.choice(('Institute', 'Archive', 'Guild', 'Society'))}",
                   "born": f"{_name(rng, 2)} {_name(rng, 3)}", "crew": _name(rng, 3)}[kind]
        if subject in subjects:
            continue
        subjects.add(subject)
        facts.append(Fact(subject, kind, _answer(kind, rng)))
    return facts


def changed_facts(facts: Sequence[Fact], share: float, seed: int) -> list[Fact]:
    """The same facts with a `share` of them given a new answer (every n-th, so each kind changes)."""
    if not 0 < share <= 1:
        raise ValueError(f"share must be in (0, 1], got {share}.")
    rng = random.Random(seed)
    step = max(1, round(1 / share))
    out = []
    for i, fact in enumerate(facts):
        if i % step == 0:
            new = fact.answer
            while new == fact.answer:
                new = _answer(fact.kind, rng)
            fact = fact.with_answer(new)
        out.append(fact)
    return out


def question_examples(facts: Sequence[Fact]) -> list[Example]:
    """The questions alone, with their answers: what the base model and a fine-tuned model are asked."""
    return [Example(f.question, f.answer) for f in facts]


def statement_examples(facts: Sequence[Fact]) -> list[Example]:
    """Training rows for a fine-tune on the documents: asked for the note about a subject, state the fact."""
    return [Example(f"Write the note about {f.subject}.", f.statement) for f in facts]


def retrieval_examples(facts: Sequence[Fact], notes: Sequence[str], picked: Sequence[int]) -> list[Example]:
    """Each question with the note the retriever picked for it placed in the prompt."""
    return [Example(f"{RETRIEVAL_INSTRUCTION}\nNote: {notes[i]}\nQuestion: {f.question}", f.answer)
            for f, i in zip(facts, picked)]


def answer_found(replies: Sequence[str], facts: Sequence[Fact]) -> float:
    """Share of replies whose first line contains the fact's answer as a word (a sentence around it is fine)."""
    import re

    if len(replies) != len(facts):
        raise ValueError(f"{len(replies)} replies for {len(facts)} facts.")
    hits = 0
    for reply, fact in zip(replies, facts):
        first = reply.strip().splitlines()[0] if reply.strip() else ""
        hits += re.search(rf"(?<![\w]){re.escape(fact.answer)}(?![\w])", first, flags=re.IGNORECASE) is not None
    return hits / len(facts)


class FactRetriever:
    """Nearest note by cosine similarity of the shipped sentence-embedding model (all-MiniLM-L6-v2)."""

    def __init__(self, device: str = "cpu"):
        from sentence_transformers import SentenceTransformer

        from .models import embedding_model_dir

        self.model = SentenceTransformer(str(embedding_model_dir()), device=device)

    def pick(self, questions: Sequence[str], notes: Sequence[str]) -> list[int]:
        """Index of the closest note for each question."""
        if not notes:
            raise ValueError("pick needs at least one note.")
        vectors = self.model.encode(list(questions), convert_to_tensor=True, normalize_embeddings=True)
        note_vectors = self.model.encode(list(notes), convert_to_tensor=True, normalize_embeddings=True)
        return (vectors @ note_vectors.T).argmax(dim=1).tolist()
