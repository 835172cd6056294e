"""The instructor's secret and everything derived from it.

Held-out data exists only where the secret is: the grader's own processes. `$FTCOURSE_HELDOUT_SEED` is
the instructor's secret integer. There is no default: a process that needs it and finds none stops.
Tests, CI and `make course` opt in to the public test seed explicitly (`public_test_env()`); `make grade`
refuses it unless `$FTCOURSE_ALLOW_PUBLIC_SEED=1` as well.

Each use gets its own seed, derived with HMAC-SHA256 (`derived_seed("03_sft/heldout")`): a derived seed
that reaches a learner's process (the capstone's generator draws with one) says nothing about the secret
or about any other exercise's held-out data. Cached references are signed with a key derived the same way.
"""

from __future__ import annotations

import hashlib
import hmac
import os

HELDOUT_SEED_ENV = "FTCOURSE_HELDOUT_SEED"
ALLOW_PUBLIC_ENV = "FTCOURSE_ALLOW_PUBLIC_SEED"
PUBLIC_TEST_SEED = 918273  # printed in this public package: tests and `make course` only, never a class's secret


class MissingSecret(RuntimeError):
    """Held-out grading was asked for without the instructor's secret."""


def heldout_seed() -> int:
    """The instructor's secret from `$FTCOURSE_HELDOUT_SEED`; the public test seed only when opted in."""
    raw = os.environ.get(HELDOUT_SEED_ENV, "").strip()
    if not raw:
        raise MissingSecret(
            f"Held-out grading needs the instructor's secret: set ${HELDOUT_SEED_ENV} to a secret integer "
            "(e.g. python -c 'import secrets; print(secrets.randbits(62))'). Learners never have it: the held-out "
            "split exists only in the instructor's grader.")
    try:
        seed = int(raw)
    except ValueError:
        raise MissingSecret(f"${HELDOUT_SEED_ENV} must be an integer, got {raw!r}.") from None
    if seed == PUBLIC_TEST_SEED and os.environ.get(ALLOW_PUBLIC_ENV) != "1":
        raise MissingSecret(
            f"${HELDOUT_SEED_ENV} is the public test seed {PUBLIC_TEST_SEED}, printed in the course package: any "
            f"learner could rebuild the held-out split. Choose your own secret (tests opt in with ${ALLOW_PUBLIC_ENV}=1).")
    return seed


def _key(secret: int, purpose: str) -> bytes:
    return hmac.new(str(secret).encode(), purpose.encode(), hashlib.sha256).digest()


def derived_seed(purpose: str, secret: int | None = None) -> int:
    """A 62-bit seed for one purpose ("04_lora/pool"), derived from the secret; it does not reveal the secret."""
    secret = heldout_seed() if secret is None else secret
    return int.from_bytes(_key(secret, "seed:" + purpose)[:8], "big") >> 2


def sign(payload: bytes, secret: int | None = None) -> str:
    """HMAC of a cached reference: an entry someone else wrote fails `verify` and is recomputed."""
    secret = heldout_seed() if secret is None else secret
    return hmac.new(_key(secret, "references"), payload, hashlib.sha256).hexdigest()


def verify(payload: bytes, mac: str, secret: int | None = None) -> bool:
    return hmac.compare_digest(sign(payload, secret), str(mac))


def public_test_env() -> dict[str, str]:
    """The environment with which tests, CI and `make course` opt in to the public test seed."""
    return {HELDOUT_SEED_ENV: str(PUBLIC_TEST_SEED), ALLOW_PUBLIC_ENV: "1"}

