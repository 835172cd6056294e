"""The grading subpackage's parts, one at a time: the secret, verdicts, artifacts, the sandbox, references,
the checks of a learner's choices, and the preprocessor's reading of a submission.

The class-level attacks (whole submissions through `make grade`) are in tests/test_tamper.py.
"""

import json
import os
import time
from pathlib import Path

import nbformat
import pytest
from conftest import ROOT

from ftcourse.grading import artifact_dir, registry, secret
from ftcourse.grading.artifacts import ArtifactError, check_tree, recorded_steps
from ftcourse.grading.grader import evaluate_artifacts
from ftcourse.grading.learner import LearnerCodeError
from ftcourse.grading.preprocessor import choose_preset, notebook_parameters, solution_sources
from ftcourse.grading.references import cached
from ftcourse.grading.sandbox import Limits, learner_identity, run_learner_code
from ftcourse.grading.verdict import Verdict, judge
from ftcourse.presets import get_preset

CPU = get_preset("cpu")
ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="privilege separation needs root (CI and grading servers)")


# ---------------------------------------------------------------- the secret

def test_no_secret_no_heldout(monkeypatch):
    monkeypatch.delenv(secret.HELDOUT_SEED_ENV, raising=False)
    with pytest.raises(secret.MissingSecret, match="instructor's secret"):
        secret.heldout_seed()


def test_the_public_test_seed_needs_an_explicit_opt_in(monkeypatch):
    monkeypatch.setenv(secret.HELDOUT_SEED_ENV, str(secret.PUBLIC_TEST_SEED))
    monkeypatch.delenv(secret.ALLOW_PUBLIC_ENV, raising=False)
    with pytest.raises(secret.MissingSecret, match="public test seed"):
        secret.heldout_seed()
    monkeypatch.setenv(secret.ALLOW_PUBLIC_ENV, "1")
    assert secret.heldout_seed() == secret.PUBLIC_TEST_SEED
    monkeypatch.setenv(secret.HELDOUT_SEED_ENV, "abc")
    with pytest.raises(secret.MissingSecret, match="must be an integer, got 'abc'"):
        secret.heldout_seed()


def test_derived_seeds_are_per_purpose_and_do_not_show_the_secret():
    s = 123456789
    a, b = secret.derived_seed("03_sft/heldout", s), secret.derived_seed("05_quantization_qlora/heldout", s)
    assert a != b and a == secret.derived_seed("03_sft/heldout", s) and str(s) not in str(a)
    assert secret.derived_seed("03_sft/heldout", s + 1) != a
    mac = secret.sign(b"payload", s)
    assert secret.verify(b"payload", mac, s) and not secret.verify(b"payload!", mac, s)
    assert not secret.verify(b"payload", mac, s + 1)


# ---------------------------------------------------------------- verdicts, artifacts, references

def test_verdict_text_lists_each_check_and_why():
    exercise = registry.exercise("sft_final_outcome")
    verdict = judge(exercise, "heldout", {"exact_match": 0.5, "probe_accuracy_drop": 0.0,
                                          "probe_perplexity_ratio": 1.0, "steps": 12}, CPU)
    text = str(verdict)
    assert text.startswith("FAIL sft_final_outcome on the heldout split")
    assert "MISS exact_match: 0.500 (needs >= 0.850)" in text and "What to try" in text
    assert verdict.reason == "exact_match 0.500 (needs >= 0.850)"
    assert Verdict.from_dict(json.loads(verdict.to_json())) == verdict


def test_a_missing_metric_never_passes():
    verdict = judge(registry.exercise("qlora_final_outcome"), "heldout", {"steps": 3}, CPU)
    assert not verdict.passed and "exact_match" in verdict.reason


def test_artifact_dir_is_known_and_rejects_unknown(tmp_path):
    assert artifact_dir("03_sft", tmp_path) == tmp_path / "artifacts" / "03_sft"
    with pytest.raises(KeyError, match="No outcome exercise"):
        artifact_dir("99_nothing", tmp_path)


def test_begin_exercise_empties_only_an_outcome_exercises_folder(tmp_path, capsys):
    from ftcourse.grading import begin_exercise

    preset = get_preset("cpu")

    def stale_adapter():
        folder = artifact_dir("04_lora", tmp_path) / "adapter"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "adapter_model.safetensors").write_text("an earlier run's")
        return folder

    stale_adapter()
    other = artifact_dir("03_sft", tmp_path)
    other.mkdir(parents=True)
    begin_exercise("capstone_final_outcome", preset, tmp_path)
    assert not artifact_dir("04_lora", tmp_path).exists() and other.is_dir()  # another notebook's folder stays
    out = capsys.readouterr().out
    assert "Exercise 4.2" in out and "Emptied artifacts/04_lora/" in out
    begin_exercise("capstone_final_outcome", preset, tmp_path, show_spec=False)
    out = capsys.readouterr().out
    assert "Exercise 4.2" not in out and "Emptied artifacts/04_lora/" in out
    kept = stale_adapter()
    begin_exercise("lora_layer_tests", preset, tmp_path)  # a function exercise of the same notebook saves nothing
    assert kept.is_dir() and "Emptied" not in capsys.readouterr().out


def test_each_outcome_notebook_begins_its_exercise_before_it_saves():
    """Every notebook with an outcome exercise calls `begin_exercise` on it before the first line that writes into
    its artifact folder, so that a self-check never reads an earlier run's files."""
    from ftcourse.grading.registry import EXERCISES

    for ex in (e for e in EXERCISES if e.kind == "outcome"):
        lines = (ROOT / "solutions" / ex.notebook / f"{ex.notebook}.py").read_text().splitlines()
        begins = [i for i, line in enumerate(lines) if line.startswith(f'begin_exercise("{ex.grade_id}", preset')]
        writes = [i for i, line in enumerate(lines) if "artifact_dir(" in line and not line.startswith(("from ", "#"))
                  and "self_check" not in line and "assert_outcome" not in line]
        assert begins, f"{ex.notebook} never calls begin_exercise({ex.grade_id!r}, preset)"
        assert writes and begins[-1] < writes[0], f"{ex.notebook}: begin_exercise at line {begins[-1] + 1}, after " \
                                                  f"a write into the artifact folder at line {writes[0] + 1}"


def test_artifacts_refuse_symlinks_and_forged_records(tmp_path):
    folder = tmp_path / "a"
    folder.mkdir()
    (folder / "training.json").write_text(json.dumps({"steps": "12"}))
    assert recorded_steps(folder) == 10**9  # not an int: over any budget
    (folder / "training.json").write_text("not json")
    assert recorded_steps(folder) == 10**9
    (folder / "link").symlink_to("/etc/passwd")
    with pytest.raises(ArtifactError, match="symbolic link"):
        check_tree(folder)


def test_a_signed_reference_that_someone_rewrote_is_recomputed(tmp_path, monkeypatch):
    monkeypatch.setenv("FTCOURSE_REFERENCES", str(tmp_path))
    calls = []

    def compute():
        calls.append(1)
        return {"exact_match": 0.25}

    assert cached("x", [1], compute, secret=42) == {"exact_match": 0.25}
    assert cached("x", [1], compute, secret=42) == {"exact_match": 0.25} and len(calls) == 1
    (entry,) = tmp_path.glob("x_signed_*.json")
    forged = json.loads(entry.read_text()) | {"value": {"exact_match": -1.0}}
    entry.write_text(json.dumps(forged))
    assert cached("x", [1], compute, secret=42) == {"exact_match": 0.25} and len(calls) == 2
    assert cached("x", [1], compute, secret=43) == {"exact_match": 0.25} and len(calls) == 3  # another secret


def test_self_check_without_artifacts_names_what_is_missing(tmp_path):
    verdict = evaluate_artifacts("03_sft", artifact_dir("03_sft", tmp_path), "validation", "cpu")
    assert not verdict.passed and "No trained adapter found" in verdict.message


def test_heldout_evaluation_without_the_secret_gives_no_verdict(tmp_path, monkeypatch):
    monkeypatch.delenv(secret.HELDOUT_SEED_ENV)
    folder = artifact_dir("03_sft", tmp_path)
    (folder / "adapter").mkdir(parents=True)
    (folder / "adapter" / "adapter_config.json").write_text("{}")
    verdict = evaluate_artifacts("03_sft", folder, "heldout", "cpu")
    assert not verdict.passed and "instructor's secret" in verdict.message


# ---------------------------------------------------------------- what the learner chose, checked

def test_setups_outside_the_rules_are_refused_before_training():
    from ftcourse.grading.produce import check_setup
    from ftcourse.training import SFTSetup

    ok = vars(SFTSetup(max_steps=12, batch_size=8))
    assert check_setup(ok, CPU).max_steps == 12
    for change, message in (({"max_steps": 36}, "at most 24"), ({"method": "full"}, "must be 'lora'"),
                            ({"num_epochs": 3.0}, "num_epochs must stay None"), ({"batch_size": 4096}, "at most 32"),
                            ({"learning_rate": float("nan")}, "finite|learning_rate"), ({"oops": 1}, "does not know"),
                            ({"lora_r": "16"}, "must be an integer")):
        with pytest.raises(LearnerCodeError, match=message):
            check_setup(ok | change, CPU)


def test_the_capstone_pool_is_split_by_the_secret():
    from ftcourse.grading.produce import partition_pool

    pool = list(range(200))
    train, held = partition_pool(pool, 40, secret=7)
    assert len(held) == 40 and len(train) == 160 and not set(train) & set(held)
    assert partition_pool(pool, 40, secret=7) == (train, held) and partition_pool(pool, 40, secret=8)[1] != held


# ---------------------------------------------------------------- reading a submission (never executing it)

def _notebook(*cells):
    nb = nbformat.v4.new_notebook()
    nb.cells = list(cells)
    return nb


def _code(source, grade_id=None, solution=True, tags=()):
    cell = nbformat.v4.new_code_cell(source)
    if grade_id:
        cell.metadata["nbgrader"] = {"grade_id": grade_id, "solution": solution, "grade": not solution}
    if tags:
        cell.metadata["tags"] = list(tags)
    return cell


def test_parameters_are_parsed_as_literals_and_papermill_injection_wins():
    nb = _notebook(_code('PRESET = "auto"\nSEED = 0', tags=["parameters"]),
                   _code('PRESET = "cpu"\nSEED = 3\nX = __import__("os").system("touch /tmp/pwned")',
                         tags=["injected-parameters"]))
    assert notebook_parameters(nb) == {"PRESET": "cpu", "SEED": 3}
    assert not Path("/tmp/pwned").exists()


def test_a_solution_cell_that_appears_twice_is_not_graded():
    nb = _notebook(_code("a = 1", "sft_setup"), _code("a = 2", "sft_setup"), _code("b = 1", "sft_label_mask"),
                   _code("print('tests')", "sft_final_outcome", solution=False))
    assert solution_sources(nb) == {"sft_label_mask": "b = 1"}


def test_a_cell_left_as_released_is_failed_without_a_child(tmp_path, monkeypatch):
    """The release's stub raises NotImplementedError: the grader says so without starting a child for it, and
    runs one for any other source (a single character changed is a learner's cell)."""
    from types import SimpleNamespace

    import nbformat as nbf

    from ftcourse.grading import learner
    from ftcourse.grading.preprocessor import released_sources

    stub = "def build_chat_labels(tokenizer, prompt, answer):\n    # YOUR CODE HERE\n    raise NotImplementedError()"
    (tmp_path / "course" / "03_sft").mkdir(parents=True)
    nbf.write(_notebook(_code(stub, "sft_label_mask"), _code("print('tests')", "sft_label_mask_tests", solution=False)),
              tmp_path / "course" / "03_sft" / "03_sft.ipynb")
    monkeypatch.setenv("FTCOURSE_COURSE_ROOT", str(tmp_path))
    assert released_sources("03_sft") == {"sft_label_mask": stub}
    assert released_sources("no_such_notebook") == {}
    started = []
    monkeypatch.setattr(learner, "run_learner_code",
                        lambda *a, **k: started.append(a) or SimpleNamespace(ok=True, data={"ran": True}))
    cells = learner.Cells({"sft_label_mask": stub}, "cpu", 0, frozenset({"sft_label_mask"}))
    with pytest.raises(learner.LearnerCodeError, match="as released: it raises NotImplementedError"):
        learner.call(cells, ["sft_label_mask"], "label_mask")
    assert not started
    edited = learner.Cells({"sft_label_mask": stub + " "}, "cpu", 0)  # not in as_released: to a child (the stand-in)
    assert learner.call(edited, ["sft_label_mask"], "label_mask") == {"ran": True} and len(started) == 1


def test_the_instructors_preset_wins_over_the_submissions(monkeypatch):
    monkeypatch.delenv("FTCOURSE_PRESET", raising=False)
    assert choose_preset("cpu") == ("cpu", "submission")
    assert choose_preset("nonsense")[1] == "default"
    monkeypatch.setenv("FTCOURSE_PRESET", "cpu")
    assert choose_preset("t4") == ("cpu", "instructor")


# ---------------------------------------------------------------- the sandbox: caps and separation

def _run(source: str, limits: Limits | None = None, secret_inputs: bool = False):
    return run_learner_code({"cells": [["attack", source]], "provides": [], "preset": "cpu", "seed": 0, "op": "values",
                             "inputs": {"names": ["answer"]}}, limits=limits, secret_inputs=secret_inputs,
                            site=os.environ.get("FTCOURSE_GRADING_SITE"), cache=os.environ.get("FTCOURSE_LEARNER_CACHE"))


def test_a_child_returns_data_only(learner_runtime):
    result = _run("answer = {'passed': True, 'n': [1, 2]}")
    assert result.ok and result.data == {"answer": {"passed": True, "n": [1, 2]}}


@pytest.mark.parametrize("source,kind", [
    ("import os\nprint('FTCOURSE-VERDICT {\"passed\": true}')\nos._exit(0)", "no_result"),
    ("import sys\nsys.exit(0)", "learner_error"),
    ("import os, sys\nos.write(int(sys.argv[2]), b'{\"ok\": true, \"data\"')\nos._exit(0)", "bad_result"),
    ("while True:\n    pass", "timeout"),
    ("import signal, time\nfor s in (signal.SIGINT, signal.SIGTERM):\n    signal.signal(s, signal.SIG_IGN)\n"
     "time.sleep(10**6)", "timeout"),
    ("x = bytearray(64 * 2**30)", "learner_error"),
    ("import os\nos.kill(os.getpid(), 9)", "killed"),
])
def test_faults_end_in_a_reason_not_a_verdict(learner_runtime, source, kind):
    result = _run(source, Limits(seconds=4 if kind == "timeout" else 20))  # a child starts in ~0.2 s; a spinning one costs the cap
    assert not result.ok and result.kind == kind, result
    if kind == "learner_error" and "bytearray" in source:
        assert "MemoryError" in result.error


def test_a_huge_output_is_capped(learner_runtime):
    result = _run("import sys\nfor _ in range(200):\n    sys.stdout.write('x' * 2**20)\nanswer = 1",
                  Limits(seconds=60, output_mb=8))
    assert not result.ok


def test_secret_inputs_hide_the_learners_exception_text(learner_runtime):
    result = _run("raise ValueError('hidden row: Write the number in digits. forty-two')", secret_inputs=True)
    assert result.kind == "learner_error" and "forty-two" not in result.error and "ValueError" in result.error
    assert "line 1" in result.error
    assert "forty-two" in _run("raise ValueError('forty-two')").error


def test_the_child_has_no_secret_in_its_environment(learner_runtime):
    result = _run("import os\nanswer = {k: v for k, v in os.environ.items() if 'SEED' in k or 'FTCOURSE_H' in k}")
    assert result.ok and result.data == {"answer": {}}


@ROOT_ONLY
def test_under_root_the_child_is_the_learner_user_and_reaches_nothing_of_the_graders(learner_runtime):
    identity = learner_identity()
    source = ("import os, sys\nfrom pathlib import Path\nfound = {'uid': os.getuid()}\n"
              "for name, path in [('parent_environ', f'/proc/{os.getppid()}/environ'), ('init_environ', '/proc/1/environ'),\n"
              "                   ('root_home', '/root/.cache')]:\n"
              "    try:\n        found[name] = len(open(path, 'rb').read()) if not os.path.isdir(path) else os.listdir(path)\n"
              "    except OSError as e:\n        found[name] = type(e).__name__\n"
              "site = Path(sys.path[0])\n"
              "try:\n    (site / 'ftcourse' / 'grading' / 'verdict.py').open('a').write('#')\n    found['site'] = 'written'\n"
              "except OSError as e:\n    found['site'] = type(e).__name__\n"
              "try:\n    os.kill(os.getppid(), 9)\n    found['kill'] = 'sent'\nexcept OSError as e:\n    found['kill'] = type(e).__name__\n"
              "answer = found\n")
    result = _run(source)
    assert result.ok, result
    found = result.data["answer"]
    assert found["uid"] == identity.uid
    assert found["parent_environ"] == found["init_environ"] == found["root_home"] == "PermissionError", found
    assert found["site"] == "PermissionError" and found["kill"] == "PermissionError", found


@ROOT_ONLY
def test_a_preflight_starts_its_child_once_per_install_user_and_cache(learner_runtime, tmp_path, monkeypatch):
    """`make grade`'s preflight proves that the learner user can run the grading install's Python by starting a child
    as that user. A second grading run in the same process with the same install (its source-hash stamp), learner
    cache and user starts none; another stamp starts one again; a failure is not remembered; an install without a
    stamp is never taken as proven."""
    import sys

    sys.path.insert(0, str(ROOT / "scripts"))
    import grade

    from ftcourse.grading import sandbox

    outcomes = []  # what the stand-in child answers, in order

    def child(request, **_):
        ok = outcomes.pop(0)
        return sandbox.ChildResult(ok, None, "" if ok else "no torch here", "ok" if ok else "learner_error", 0.0, "")

    monkeypatch.setattr(sandbox, "run_learner_code", child)
    monkeypatch.setattr(grade, "_PROVEN", set())
    site = tmp_path / "site"
    site.mkdir()
    (site / grade.SOURCE_STAMP).write_text("one")
    env = dict(learner_runtime, FTCOURSE_GRADING_SITE=str(site))
    outcomes[:] = [True]
    grade.preflight(env)
    grade.preflight(env)  # proven: no child (the stand-in would raise IndexError)
    (site / grade.SOURCE_STAMP).write_text("two")
    outcomes[:] = [False, True]
    with pytest.raises(sandbox.IsolationError, match="no torch here"):
        grade.preflight(env)
    grade.preflight(env)  # the failure was not remembered: a child again, which succeeds
    (site / grade.SOURCE_STAMP).unlink()
    outcomes[:] = [True, True]
    grade.preflight(env)
    grade.preflight(env)
    assert outcomes == []  # no stamp: a child each time


def _session(source: str, limits: Limits | None = None):
    from ftcourse.grading.sandbox import LearnerSession

    return LearnerSession({"cells": [["attack", source]], "provides": [], "preset": "cpu", "seed": 0}, limits=limits,
                          site=os.environ.get("FTCOURSE_GRADING_SITE"), cache=os.environ.get("FTCOURSE_LEARNER_CACHE"))


def test_a_session_runs_the_cells_once_and_answers_each_call(learner_runtime):
    """Notebook 08's reward functions are called at every GRPO step: one child keeps the cells' state between
    calls (a counter), answers each call as data, and as root runs as the learner user."""
    source = ("import os\ncalls = []\ndef counted(completions, **_):\n    calls.append(1)\n"
              "    return [float(len(calls))] * len(completions)\nreward_funcs = [counted]\nanswer = os.getuid()\n")
    batch = {"prompts": ["p"] * 2, "completions": [[{"role": "assistant", "content": "4"}]] * 2,
             "completion_ids": [[1], [2]], "answer": [4, 4], "item": ["pears"] * 2}
    with _session(source) as child:
        assert child.started.ok
        assert child.call("grpo_rewards", batch).data == [[1.0, 1.0]]
        assert child.call("grpo_rewards", batch).data == [[2.0, 2.0]]
        uid = child.call("values", {"names": ["answer"]}).data["answer"]
        assert uid == (learner_identity().uid if os.geteuid() == 0 else os.geteuid())
        wrong = child.call("grpo_rewards", batch | {"completions": batch["completions"] * 2})  # 4 replies, 2 of the rest
        assert wrong.ok  # the learner's function saw 4 completions and answered 4: checked by the grader's side
        assert child.proc.poll() is None


@pytest.mark.parametrize("source,kind", [
    ("def spin(completions, **_):\n    while True:\n        pass\nreward_funcs = [spin]", "timeout"),
    ("import os\ndef leave(completions, **_):\n    os._exit(0)\nreward_funcs = [leave]", "no_result"),
    ("def bad(completions, **_):\n    return ['many']\nreward_funcs = [bad]", "learner_error"),
])
def test_a_session_call_that_fails_ends_in_a_reason(learner_runtime, source, kind):
    batch = {"prompts": ["p"], "completions": ["4"], "completion_ids": [[1]], "answer": [4], "item": ["pears"]}
    with _session(source, Limits(seconds=6)) as child:
        assert child.started.ok
        first = child.call("grpo_rewards", batch)
        assert not first.ok and first.kind == kind, first
        if kind != "learner_error":  # the child is gone: every later call gives that reason, without waiting
            again = child.call("grpo_rewards", batch)
            assert again is first


@pytest.mark.parametrize("source,kind", [
    # closes the result pipe and lives on: the grader must not wait for it
    ("import os, sys, time\nos.close(int(sys.argv[2]))\ntime.sleep(10**6)", "no_result"),
    # answers before it is asked (ready-made lines), then never reads its requests
    ("import os, sys, time\nfd = int(sys.argv[2])\nos.write(fd, b'{\"ok\": true, \"data\": null}\\n' * 50)\n"
     "time.sleep(10**6)", "bad_result"),
])
def test_a_session_child_that_breaks_the_protocol_is_stopped_without_hanging(source, kind, learner_runtime):
    """From an attack review: a child that closes its result pipe and sleeps, or writes answers ahead of the
    grader's requests and never reads them, is stopped with a reason within the cap, not waited on forever."""
    batch = {"prompts": ["p"] * 400, "completions": ["x" * 200] * 400, "completion_ids": [[1]] * 400,
             "answer": [4] * 400, "item": ["pears"] * 400}  # ~100 KB a request: more than a pipe holds
    start = time.perf_counter()
    with _session(source, Limits(seconds=8)) as child:
        results = [child.call("grpo_rewards", batch) for _ in range(3)]
    assert time.perf_counter() - start < 30
    assert not results[-1].ok and results[-1].kind in (kind, "timeout"), results


def test_a_session_has_one_time_budget_for_all_its_calls(learner_runtime):
    """Slow answers just under a per-call cap cannot add up: the wait is capped over the whole session."""
    source = "import time\ndef slow(completions, **_):\n    time.sleep(2)\n    return [0.0] * len(completions)\nreward_funcs = [slow]"
    batch = {"prompts": ["p"], "completions": ["4"], "completion_ids": [[1]], "answer": [4], "item": ["pears"]}
    with _session(source, Limits(seconds=5)) as child:
        kinds = [child.call("grpo_rewards", batch).kind for _ in range(4)]
    assert kinds[0] == "ok" and kinds[-1] == "timeout", kinds


def test_a_session_whose_cells_fail_answers_nothing(learner_runtime):
    with _session("raise ValueError('no rewards here')") as child:
        assert not child.started.ok and "no rewards here" in child.started.error
        assert child.call("grpo_rewards", {}) is child.started


@ROOT_ONLY
def test_a_daemon_does_not_outlive_its_submission(learner_runtime, tmp_path):
    identity = learner_identity()
    source = ("import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
              "        open('/tmp/ftcourse-daemon-mark', 'w').write('x')\n        time.sleep(600)\n    os._exit(0)\n"
              "time.sleep(1)\nanswer = 1\n")
    result = _run(source)
    assert result.ok
    from ftcourse.grading.sandbox import _processes_of

    time.sleep(0.2)
    assert _processes_of(identity.uid) == [] and not Path("/tmp/ftcourse-daemon-mark").exists()


@ROOT_ONLY
@pytest.mark.parametrize("lister", ["find", "python"])
def test_what_the_learner_user_left_is_removed_and_nothing_else(tmp_path, monkeypatch, lister):
    """The sweep after each child: entries owned by the learner's uid go (a folder whole, a link as a link, at any
    depth), everything else stays; find(1) lists them, or a walk in Python where find cannot run."""
    from ftcourse.grading import sandbox

    if lister == "python":
        monkeypatch.setattr(sandbox, "_owned_by", lambda top, uid: None)
    uid = 54321
    outside = tmp_path / "outside.txt"
    outside.write_text("keep")
    top = tmp_path / "tmp"
    (top / "shared" / "deep").mkdir(parents=True)
    (top / "shared" / "deep" / "file").write_text("x")
    (top / "graders" / "deep" / "planted").mkdir(parents=True)
    (top / "graders" / "deep" / "file").write_text("x")
    (top / "graders" / "deep" / "planted" / "kept").write_text("x")
    (top / "graders" / "link").symlink_to(outside)
    (top / "shared" / "link").symlink_to(outside)
    for path in [top / "shared" / "deep" / "file", top / "shared" / "deep", top / "shared" / "link"]:
        os.lchown(path, uid, uid)
    os.chown(top / "graders" / "deep" / "planted", 0, 0)
    sandbox._remove_owned(top, uid)
    assert sorted(p.relative_to(top).as_posix() for p in top.rglob("*")) == [
        "graders", "graders/deep", "graders/deep/file", "graders/deep/planted", "graders/deep/planted/kept", "graders/link", "shared"]
    assert outside.read_text() == "keep"
