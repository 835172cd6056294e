"""Seeded generators of verifiable tasks that the base model fails and a short fine-tune fixes.

A task is a list of `Example(prompt, answer)`. Splits come from different seeds: `train` and
`validation` seeds are public; the held-out seed belongs to the grader (see `ftcourse.grading`).
Held-out items that also occur in train are dropped, so the held-out set is never seen in training.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import random

MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December"]
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
TRAIN_SEED = 1234
VALIDATION_SEED = 5678
DATE_INSTRUCTION = "Write the date as YYYY-MM-DD."
# Dates arrive bare or inside sentences of very different lengths, as they do in real data.
CONTEXTS = [
    "{}",
    "{}",
    "Date: {}",
    "She was born on {}.",
    "The meeting was moved to {}.",
    "According to the shipping notes, the parcel left the warehouse on {} and reached the customer two days later.",
    "Please remember that the library will be closed for repairs on {}, so return your borrowed books before then.",
    "In the minutes of the town council, the vote on the new bridge is recorded as taking place on {}, after a long debate about its cost.",
]


@dataclasses.dataclass(frozen=True)
class Example:
    """One task item: the user's prompt and the single correct answer."""

    prompt: str
    answer: str

    def messages(self) -> list[dict[str, str]]:
        """The conversational form SFT trains on: user prompt, assistant answer."""
        return [{"role": "user", "content": self.prompt}, {"role": "assistant", "content": self.answer}]


def _ordinal(n: int) -> str:
    suffix = "th" if 11 <= n % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _date_surface(date: dt.date, rng: random.Random) -> str:
    """One of several human ways to write a date; lengths vary, as real data does."""
    m, d, y = MONTHS[date.month - 1], date.day, date.year
    forms = [
        f"{m} {d}, {y}",
        f"{d} {m} {y}",
        f"{m[:3]} {d} {y}",
        f"the {_ordinal(d)} of {m}, {y}",
        f"{WEEKDAYS[date.weekday()]}, {m} {_ordinal(d)}, {y}",
        f"{d:02d}.{date.month:02d}.{y} (day.month.year)",
        f"{m[:3]}. {_ordinal(d)} {y}",
    ]
    return rng.choice(forms)


def draw_distinct(n: int, seed: int, draw) -> list[Example]:
    """`n` examples with distinct prompts, each from `draw(rng)`, with one `random.Random(seed)`."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(seed)
    examples: dict[str, Example] = {}
    while len(examples) < n:
        example = draw(rng)
        examples.setdefault(example.prompt, example)
    return list(examples.values())


def make_date_examples(n: int, seed: int) -> list[Example]:
    """`n` distinct date-to-ISO examples drawn with `seed` (years 1950-2049)."""
    start, span = dt.date(1950, 1, 1).toordinal(), 365 * 100

    def draw(rng: random.Random) -> Example:
        date = dt.date.fromordinal(start + rng.randrange(span))
        return Example(f"{DATE_INSTRUCTION}\n{rng.choice(CONTEXTS).format(_date_surface(date, rng))}", date.isoformat())

    return draw_distinct(n, seed, draw)


def disjoint_from(candidates: list[Example], seen: list[Example]) -> list[Example]:
    """Candidates whose prompt and answer pair does not occur in `seen` (no train/test leakage)."""
    seen_answers = {e.answer for e in seen}
    seen_prompts = {e.prompt for e in seen}
    return [e for e in candidates if e.prompt not in seen_prompts and e.answer not in seen_answers]


def date_task_splits(n_train: int, n_eval: int, heldout_seed: int | None = None) -> dict[str, list[Example]]:
    """Train and public validation splits, plus a held-out split when the grader passes its seed."""
    train = make_date_examples(n_train, TRAIN_SEED)
    splits = {"train": train, "validation": disjoint_from(make_date_examples(3 * n_eval, VALIDATION_SEED), train)[:n_eval]}
    if heldout_seed is not None:
        pool = disjoint_from(make_date_examples(3 * n_eval, heldout_seed), train + splits["validation"])
        splits["heldout"] = pool[:n_eval]
    return splits


# ---------------------------------------------------------------- phone numbers (notebook 01)

PHONE_INSTRUCTION = "Write the phone number as XXX-XXX-XXXX."
PHONE_TRAIN_SEED = 2468
PHONE_VALIDATION_SEED = 1357
PHONE_CONTEXTS = [
    "{}",
    "{}",
    "Phone: {}",
    "Call me at {} after six.",
    "You can reach the front desk on {} during office hours.",
    "If the delivery is late, the customer asked us to ring {} before noon and leave a message with the neighbour.",
]


def _phone_surface(area: int, exchange: int, line: int, rng: random.Random) -> str:
    """One of the ways people write a North American number."""
    forms = [
        f"({area}) {exchange}-{line:04d}",
        f"{area}.{exchange}.{line:04d}",
        f"{area} {exchange} {line:04d}",
        f"{area}{exchange}{line:04d}",
        f"+1 {area} {exchange} {line:04d}",
        f"1-{area}-{exchange}-{line:04d}",
        f"+1 ({area}) {exchange}.{line:04d}",
    ]
    return rng.choice(forms)


def make_phone_examples(n: int, seed: int) -> list[Example]:
    """`n` distinct phone-number normalisation examples drawn with `seed`."""

    def draw(rng: random.Random) -> Example:
        area, exchange, line = rng.randrange(201, 990), rng.randrange(201, 990), rng.randrange(0, 10000)
        prompt = f"{PHONE_INSTRUCTION}\n{rng.choice(PHONE_CONTEXTS).format(_phone_surface(area, exchange, line, rng))}"
        return Example(prompt, f"{area}-{exchange}-{line:04d}")

    return draw_distinct(n, seed, draw)


def phone_task_splits(n_train: int, n_eval: int, heldout_seed: int | None = None) -> dict[str, list[Example]]:
    """Train and public validation splits of the phone task, plus held-out when the grader passes its seed."""
    train = make_phone_examples(n_train, PHONE_TRAIN_SEED)
    splits = {"train": train,
              "validation": disjoint_from(make_phone_examples(3 * n_eval, PHONE_VALIDATION_SEED), train)[:n_eval]}
    if heldout_seed is not None:
        splits["heldout"] = disjoint_from(make_phone_examples(3 * n_eval, heldout_seed), train + splits["validation"])[:n_eval]
    return splits


# ---------------------------------------------------------------- numbers in words (notebook 02)

NUMBER_INSTRUCTION = "Write the number in digits."
NUMBER_TRAIN_SEED = 3141
NUMBER_TEST_SEED = 2718
_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
         "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
NUMBER_CONTEXTS = ["{}", "{}", "The invoice total came to {} euros.", "We counted {} birds on the lake this morning."]


def number_words(n: int) -> str:
    """English words for 0 <= n < 1,000,000 ("four thousand and twelve")."""
    if not 0 <= n < 1_000_000:
        raise ValueError(f"number_words covers 0..999999, got {n}")
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else "-" + _ONES[n % 10])
    if n < 1000:
        rest = n % 100
        return _ONES[n // 100] + " hundred" + ("" if rest == 0 else " and " + number_words(rest))
    rest = n % 1000
    tail = "" if rest == 0 else (" and " if rest < 100 else " ") + number_words(rest)
    return number_words(n // 1000) + " thousand" + tail


def make_number_examples(n: int, seed: int) -> list[Example]:
    """`n` distinct words-to-digits examples drawn with `seed` (numbers from 20 to 9,999)."""

    def draw(rng: random.Random) -> Example:
        value = rng.choice([rng.randrange(20, 1000), rng.randrange(1000, 10_000)])
        return Example(f"{NUMBER_INSTRUCTION}\n{rng.choice(NUMBER_CONTEXTS).format(number_words(value))}", str(value))

    return draw_distinct(n, seed, draw)


def number_task_splits(n_train: int, n_eval: int, heldout_seed: int | None = None) -> dict[str, list[Example]]:
    """Words-to-digits splits: a training pool, a public `test` split (part of it leaks into notebook 02's raw
    dump), a public clean `validation` split, and held-out when the grader passes its seed. All disjoint."""
    train = make_number_examples(n_train, NUMBER_TRAIN_SEED)
    test = disjoint_from(make_number_examples(3 * n_eval, NUMBER_TEST_SEED), train)[:n_eval]
    validation = disjoint_from(make_number_examples(3 * n_eval, NUMBER_TEST_SEED + 1), train + test)[:n_eval]
    splits = {"train": train, "test": test, "validation": validation}
    if heldout_seed is not None:
        splits["heldout"] = disjoint_from(make_number_examples(3 * n_eval, heldout_seed), train + test + validation)[:n_eval]
    return splits
