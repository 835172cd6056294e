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


CHECKS = {"03_label_mask": ("build_chat_labels", check_label_mask)}


def _main() -> int:
    import warnings

    warnings.filterwarnings("ignore")
    request = json.loads(sys.stdin.read())
    name, check = CHECKS[request["exercise"]]
    namespace: dict = {"__name__": "__learner__"}
    try:
        exec(compile(request["source"], "<solution cell>", "exec"), namespace)
        if name not in namespace:
            raise AssertionError(f"The solution cell does not define {name}().")
        message, passed = check(namespace[name]), True
    except Exception as exc:  # any failure of the learner's code is a failed check, with its message
        message, passed = f"{type(exc).__name__}: {exc}", False
    print(VERDICT_MARK + json.dumps({"passed": passed, "message": message}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_main())
