import json
import subprocess
import sys

import pytest

from ftcourse.function_checks import check_label_mask

REFERENCE = '''
def build_chat_labels(tokenizer, prompt, answer):
    user = [{"role": "user", "content": prompt}]
    p = tokenizer.apply_chat_template(user, tokenize=True, add_generation_prompt=True)["input_ids"]
    ids = tokenizer.apply_chat_template(user + [{"role": "assistant", "content": answer}], tokenize=True)["input_ids"]
    return list(ids), [-100] * len(p) + list(ids[len(p):])
'''


def _define(source):
    ns = {}
    exec(source, ns)
    return ns["build_chat_labels"]


def test_reference_matches_trl(tokenizer):
    assert "matches TRL" in check_label_mask(_define(REFERENCE), tokenizer=tokenizer)


def test_unmasked_labels_fail_with_position(tokenizer):
    wrong = REFERENCE.replace("[-100] * len(p) + list(ids[len(p):])", "list(ids)")
    with pytest.raises(AssertionError, match="labels differs first at position 0"):
        check_label_mask(_define(wrong), tokenizer=tokenizer)


def test_mask_that_drops_end_of_turn_fails(tokenizer):
    wrong = REFERENCE.replace("list(ids[len(p):])", "list(ids[len(p):-2]) + [-100, -100]")
    with pytest.raises(AssertionError, match="labels differs"):
        check_label_mask(_define(wrong), tokenizer=tokenizer)


@pytest.mark.parametrize("source,passed", [(REFERENCE, True), ("def build_chat_labels(t, p, a):\n    raise NotImplementedError()", False),
                                           ("x = 1", False)])
def test_out_of_kernel_check_runs_the_cell_source(source, passed):
    proc = subprocess.run([sys.executable, "-I", "-m", "ftcourse.function_checks"], capture_output=True, text=True,
                          input=json.dumps({"exercise": "03_label_mask", "source": source}), timeout=600)
    line = next(l for l in proc.stdout.splitlines() if l.startswith("FTCOURSE-VERDICT "))
    assert json.loads(line.split(" ", 1)[1])["passed"] is passed


def _solution_source(slug, grade_id):
    from pathlib import Path

    import jupytext

    source = Path(__file__).resolve().parent.parent / "solutions" / slug / f"{slug}.py"
    return next(c.source for c in jupytext.read(source).cells if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id)


@pytest.mark.parametrize("exercise,slug,grade_id", [("04_lora_layer", "04_lora", "lora_layer"),
                                                    ("05_nf4", "05_quantization_qlora", "nf4_functions")])
def test_out_of_kernel_checks_of_04_and_05(exercise, slug, grade_id):
    reference = _solution_source(slug, grade_id)
    stub = reference.split("### BEGIN SOLUTION")[0] + "        raise NotImplementedError()\n"
    for source, passed in ((reference, True), (stub, False)):
        proc = subprocess.run([sys.executable, "-I", "-m", "ftcourse.function_checks"], capture_output=True, text=True,
                              input=json.dumps({"exercise": exercise, "source": source}), timeout=600)
        line = next(l for l in proc.stdout.splitlines() if l.startswith("FTCOURSE-VERDICT "))
        assert json.loads(line.split(" ", 1)[1])["passed"] is passed, (exercise, passed, line)
