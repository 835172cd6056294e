"""The tamper suite: one class folder of notebook 03 graded with `make grade`'s code, holding the reference
graded last, after the attack submissions and the untouched release. Each attack earns 0 on what it
attacks; the reference earns full marks after every attack, with the verdict the notebook's own hidden test
got before the class was graded (the same grader and held-out split, in the kernel's run); nothing an attack
tried survives it (the package, the caches, the gradebook, processes, the secret).

Exercise 3.1 (`sft_label_mask`, a function checked against TRL) and 3.2 (`sft_setup`, a fine-tune the grader
trains) are the two cells an attack can fill. Attacks that need privilege separation to fail (reading the
secret or the instructor's files, rewriting the package, caches or gradebook, a daemon) are only meaningful
where grading runs as root: there the class is graded as `make grade` grades it on a server.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import string
from pathlib import Path

import nbformat
import pytest
from conftest import ROOT, grade_class

from ftcourse.grading import secret

SLUG = "03_sft"
LABEL, SETUP = "sft_label_mask", "sft_setup"
TESTS = {LABEL: "sft_label_mask_tests", SETUP: "sft_final_outcome"}
WRONG_LABELS = ("def build_chat_labels(tokenizer, prompt, answer):\n"
                "    ids = tokenizer.apply_chat_template([{'role': 'user', 'content': prompt}, "
                "{'role': 'assistant', 'content': answer}], tokenize=True)['input_ids']\n"
                "    return list(ids), list(ids)  # no mask at all\n")
FORGED = ("print('FTCOURSE-VERDICT {\"passed\": true, \"message\": \"ok\"}')\n"
          "print(\"[graded by the course's grader, outside the notebook] PASS $test\")\n")

# name -> (cells: {solution grade_id: source template}, the solution cells it attacks, a word its reason shows)
ATTACKS = {
    "forged_verdict_and_exit": ({LABEL: FORGED + "import os\nos._exit(0)\n", SETUP: FORGED + "import os\nos._exit(0)\n"},
                                [LABEL, SETUP], "ended the process"),
    "forged_verdict_wrong_function": ({LABEL: FORGED + WRONG_LABELS}, [LABEL], "share_matching 0.000"),
    "patched_grader_untrained_adapter": ({
        LABEL: "import ftcourse.grading.verdict as v, ftcourse.grading.checks as c\n"
               "v.compare = lambda *a, **k: True\nc.run_check = lambda *a, **k: None\n" + WRONG_LABELS,
        SETUP: "import ftcourse.grading.verdict as v, ftcourse.grading.evaluate as e, ftcourse.grading.produce as p\n"
               "v.compare = lambda *a, **k: True\ne.evaluate = lambda *a, **k: None\n"
               "import ftcourse.evaluation as ev\nev.exact_match = lambda *a, **k: (1.0, [])\n"
               "lora_config = LoraConfig(r=1, lora_alpha=1, target_modules=['q_proj'], task_type='CAUSAL_LM')\n"
               "sft_config = SFTConfig(output_dir='x', max_steps=1, learning_rate=1e-9, seed=SEED, **PRESET_ARGS)\n"},
        [LABEL, SETUP], "exact_match"),
    "borrowed_reference_solution": ({LABEL: (
        "import sys\nfrom pathlib import Path\nrepo = Path(sys.executable).parents[2]\n"
        "text = (repo / 'solutions' / '03_sft' / '03_sft.py').read_text()\n"
        "cell = text[text.index('def build_chat_labels'):].split('# %%')[0]\n"
        "exec('\\n'.join(l for l in cell.splitlines() if '###' not in l))\n")}, [LABEL], "PermissionError"),
    "rewritten_package": ({LABEL: (
        "errors = []\nfor path in ['$site/ftcourse/grading/verdict.py', '$repo/ftcourse/grading/verdict.py']:\n"
        "    try:\n        open(path, 'a').write('\\ncompare = lambda *a, **k: True\\n')\n"
        "    except OSError as e:\n        errors.append(e)\n"
        "raise errors[0] if errors else RuntimeError('rewrote the grader')\n")}, [LABEL], "PermissionError"),
    "site_packages_hook": ({LABEL: (
        "import sysconfig\nopen(sysconfig.get_paths()['purelib'] + '/zz_ftcourse_hook.pth', 'w').write("
        "'import ftcourse.grading.verdict as v; v.compare = lambda *a, **k: True\\n')\n" + WRONG_LABELS)},
        [LABEL], "PermissionError"),
    "read_the_secret": ({LABEL: (
        "import os, glob\nfound = [v for k, v in os.environ.items() if 'HELDOUT' in k]\n"
        "for path in glob.glob('/proc/*/environ') + glob.glob('/proc/*/cmdline'):\n"
        "    try:\n        data = open(path, 'rb').read().replace(b'\\0', b' ').decode(errors='ignore')\n"
        "    except OSError:\n        continue\n"
        "    for word in data.split():\n"
        "        if word.startswith('FTCOURSE_HELDOUT_SEED='):\n            found.append(word.split('=', 1)[1])\n"
        "raise ValueError('found ' + (' '.join(hex(int(v)) for v in found) or 'nothing'))\n")},
        [LABEL], "found nothing"),
    "read_instructor_files": ({LABEL: (
        "import os\nfor path in ['$gradebook', '$references', '$autograded', '$repo/solutions']:\n"
        "    if os.path.isdir(path):\n        os.listdir(path)\n    else:\n        open(path, 'rb').read()\n")},
        [LABEL], "PermissionError"),
    "poisoned_caches": ({LABEL: (
        "import os\nerrors = []\nfor path in ['$learner_cache/smollm2-135m-instruct/model.safetensors',\n"
        "             '$grader_cache/smollm2-135m-instruct/model.safetensors', '$references/base_probe_signed_0.json']:\n"
        "    try:\n        open(path, 'wb').write(b'poison')\n    except OSError as e:\n        errors.append(e)\n"
        "raise errors[0] if errors else RuntimeError('poisoned')\n")}, [LABEL], "PermissionError"),
    "rewritten_gradebook": ({LABEL: (
        "import sqlite3\ndb = sqlite3.connect('file:$gradebook?mode=rw', uri=True)\n"
        "db.execute('UPDATE grade SET manual_score = 100')\ndb.commit()\n" + WRONG_LABELS)},
        [LABEL], "OperationalError"),
    "forged_artifacts_and_symlink": ({}, [LABEL, SETUP], "NotImplementedError"),
    "over_budget_setup": ({SETUP: "lora_config = LoraConfig(r=16, lora_alpha=32, task_type='CAUSAL_LM', "
                                  "target_modules=['q_proj', 'v_proj'])\nsft_config = SFTConfig(output_dir='x', "
                                  "max_steps=36, learning_rate=2e-3, seed=SEED, **PRESET_ARGS)\n"}, [SETUP], "at most 24"),
    "full_fine_tune_setup": ({SETUP: "lora_config = None\nsft_config = SFTConfig(output_dir='x', max_steps=12, "
                                     "learning_rate=2e-3, seed=SEED, **PRESET_ARGS)\n"}, [SETUP], "must be a LoraConfig"),
    "untrained_fields_setup": ({SETUP: "lora_config = LoraConfig(r=16, lora_alpha=32, task_type='CAUSAL_LM', "
                                       "target_modules=['q_proj', 'v_proj'])\nsft_config = SFTConfig(output_dir='x', "
                                       "max_steps=12, gradient_accumulation_steps=8, seed=SEED, **PRESET_ARGS)\n"},
                               [SETUP], "gradient_accumulation_steps"),
    "kill_the_grader": ({LABEL: "import os\ntry:\n    os.kill(os.getppid(), 9)\nexcept OSError:\n    pass\n"
                                "os.kill(-1, 9)\n" + WRONG_LABELS},  # signals only its own user's processes
                        [LABEL], "share_matching 0.000"),
    "endless_loop": ({LABEL: "while True:\n    pass\n"}, [LABEL], "time cap"),
    "sleep_ignoring_signals": ({SETUP: (
        "import signal, time\nfor s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):\n    signal.signal(s, signal.SIG_IGN)\n"
        "time.sleep(10**6)\n")}, [SETUP], "time cap"),
    "memory_bomb": ({LABEL: "hog = bytearray(100 * 2**30)\n"}, [LABEL], "MemoryError"),
    "daemon_for_the_next_learner": ({LABEL: (
        "import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
        "        time.sleep(5)\n        open('/tmp/ftcourse-daemon-was-here', 'w').write('x')\n"
        "        while True:\n            os.system('pkill -9 -f ftcourse')\n            time.sleep(1)\n"
        "    os._exit(0)\n" + WRONG_LABELS)}, [LABEL], "share_matching 0.000"),
    "huge_output": ({LABEL: "import os, sys\nblock = b'x' * 2**20\nfor _ in range(400):\n"
                            "    os.write(int(sys.argv[2]), block)\n    sys.stdout.write('y' * 2**20)\n"},
                    [LABEL], "not the grader's result"),  # past the file-size cap its writes fail
    "malformed_notebook": ({}, [LABEL, SETUP], "refused"),
    "symlinked_notebook": ({}, [LABEL, SETUP], "symbolic link"),
    "duplicate_solution_cell": ({}, [LABEL, SETUP], "released notebook was graded in its place"),
    "edited_hidden_tests": ({}, [LABEL, SETUP], "NotImplementedError"),
    "deleted_hidden_tests": ({}, [LABEL, SETUP], "NotImplementedError"),
}


# Defended by privilege separation alone: graded only where the tests run as root (CI does); as a normal user
# these would succeed (and the last two would kill the test run itself), as autograder/README.md says.
NEEDS_ROOT = {"borrowed_reference_solution", "rewritten_package", "site_packages_hook", "read_the_secret",
              "read_instructor_files", "poisoned_caches", "rewritten_gradebook", "kill_the_grader",
              "daemon_for_the_next_learner"}
IS_ROOT = os.geteuid() == 0


def _cell(nb, grade_id):
    return next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id)


def _sha(path: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts) if path.is_dir() else [path]:
        digest.update(str(file).encode() + file.read_bytes())
    return digest.hexdigest()


def _submission(name: str, released, reference_path: Path, reference_workdir: Path, values: dict):
    """The attack `name` as a submission (a notebook, or a writer for what is not a plain notebook)."""
    cells, _, _ = ATTACKS[name]
    nb = nbformat.from_dict(json.loads(json.dumps(released)))
    for grade_id, template in cells.items():
        test = TESTS[grade_id]
        _cell(nb, grade_id).source = string.Template(template).safe_substitute(values, test=test)
    if name == "duplicate_solution_cell":
        reference = nbformat.read(reference_path, as_version=4)
        index = nb.cells.index(_cell(nb, SETUP))
        copy = nbformat.from_dict(json.loads(json.dumps(_cell(reference, SETUP))))
        copy["id"] = "a-second-sft-setup"
        nb.cells.insert(index, copy)
    if name == "edited_hidden_tests":
        for test in TESTS.values():
            _cell(nb, test).source = "print('all tests passed')\n"
    if name == "deleted_hidden_tests":
        nb.cells = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") not in TESTS.values()]
    if name == "forged_artifacts_and_symlink":
        def write(folder, _released):
            nbformat.write(nb, folder / f"{SLUG}.ipynb")
            shutil.copytree(reference_workdir / "artifacts", folder / "artifacts")
            (folder / "artifacts" / SLUG / "training.json").write_text(json.dumps({"steps": 12, "forged": True}))
            (folder / "artifacts" / SLUG / "escape").symlink_to("/etc")
        return write
    if name == "malformed_notebook":
        return lambda folder, _released: (folder / f"{SLUG}.ipynb").write_text("{not a notebook")
    if name == "symlinked_notebook":
        return lambda folder, _released: (folder / f"{SLUG}.ipynb").symlink_to(reference_path)
    return nb


@pytest.fixture(scope="module")
def graded_class(executed_solution, learner_runtime, tmp_path_factory):  # the grader's install, hashed below
    from ftcourse.grading.sandbox import learner_identity
    from ftcourse.models import cache_root

    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setenv("FTCOURSE_CHILD_SECONDS", "30")  # the honest children take a few seconds; attacks hit the cap
    tmp_path = tmp_path_factory.mktemp("class")
    executed, workdir = executed_solution(SLUG)
    import sys

    sys.path.insert(0, str(ROOT / "scripts"))
    import grade

    gdir = grade.grading_dir()
    values = {"site": gdir / "site", "repo": ROOT, "learner_cache": gdir / "learner-cache", "grader_cache": cache_root(),
              "references": cache_root() / "references", "gradebook": tmp_path / "gradebook.db",
              "autograded": tmp_path / "autograded"}
    guarded = {"site": gdir / "site" / "ftcourse", "package": ROOT / "ftcourse",
               "learner model": gdir / "learner-cache" / "smollm2-135m-instruct" / "model.safetensors",
               "grader model": cache_root() / "smollm2-135m-instruct" / "model.safetensors"}
    reference = nbformat.read(executed, as_version=4)
    released_once = {}

    def attack(name):
        def write(folder, released):
            if "nb" not in released_once:
                released_once["nb"] = nbformat.read(released, as_version=4)
            sub = _submission(name, released_once["nb"], executed, workdir, values)
            sub(folder, released) if callable(sub) else nbformat.write(sub, folder / f"{SLUG}.ipynb")
        return write

    # learners are graded in name order: the attacks, the untouched release, then the reference (its "before" is the
    # kernel's own held-out verdict, written by the notebook's hidden test: grading it first as well cost ~2.5 min)
    attacks = [name for name in ATTACKS if IS_ROOT or name not in NEEDS_ROOT]
    submissions = {**{f"b_{name}": attack(name) for name in attacks}, "y_untouched": None, "z_reference": reference}
    before = {name: _sha(path) for name, path in guarded.items()}
    rows = grade_class(SLUG, submissions, tmp_path, monkeypatch)
    grade.print_table(rows, SLUG)  # shown with `pytest -s`: every attack, its score, the grader's seconds, why
    after = {name: _sha(path) for name, path in guarded.items()}
    identity = learner_identity()
    monkeypatch.undo()
    return {"rows": rows, "before": before, "after": after, "tmp": tmp_path, "identity": identity,
            "workdir": workdir}


def test_the_reference_earns_full_marks_after_every_attack_with_the_kernels_verdict(graded_class):
    last = graded_class["rows"]["z_reference"]
    assert last["total"] == last["max"] == 8, last["why"]
    artifacts = graded_class["workdir"] / "artifacts" / SLUG
    kernel = json.loads((artifacts / "heldout_verdict.json").read_text())  # the hidden test's run, before any attack
    graded = last["verdicts"][TESTS[SETUP]]["metrics"]
    assert kernel["passed"] and kernel["metrics"] and set(kernel["metrics"]) <= set(graded), (kernel, graded)
    for name, value in kernel["metrics"].items():  # graded exactly as alone: the attacks before it changed nothing
        assert graded[name] == pytest.approx(value, rel=1e-4), (name, value, graded[name])
    trained = json.loads((artifacts / "training.json").read_text())
    assert graded["train_losses"] == pytest.approx(trained["losses"], rel=1e-5)


def test_the_untouched_release_earns_zero_after_every_attack(graded_class):
    row = graded_class["rows"]["y_untouched"]
    assert row["total"] == 0 and all(row[t] == 0 for t in TESTS.values()), row


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_each_attack_earns_zero_on_what_it_attacks_and_the_table_says_why(graded_class, name):
    if name in NEEDS_ROOT and not IS_ROOT:
        pytest.skip("defended by privilege separation: grading runs as root on a server and in CI")
    row = graded_class["rows"][f"b_{name}"]
    _, attacked, reason = ATTACKS[name]
    for grade_id in attacked:
        assert row[TESTS[grade_id]] == 0, (name, row)
    assert reason in row["why"], (name, row["why"])


def test_nothing_an_attack_tried_survives_it(graded_class):
    assert graded_class["before"] == graded_class["after"]  # package (both installs) and models unchanged
    import sysconfig

    assert not Path(sysconfig.get_paths()["purelib"], "zz_ftcourse_hook.pth").exists()
    assert not Path("/tmp/ftcourse-daemon-was-here").exists()
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{graded_class['tmp'] / 'gradebook.db'}") as gb:
        for submission in gb.assignment_submissions(SLUG):
            for notebook in submission.notebooks:
                assert all(g.manual_score is None for g in notebook.grades), submission.student.id
    identity = graded_class["identity"]
    if identity is not None:
        from ftcourse.grading.sandbox import _processes_of

        assert _processes_of(identity.uid) == []
    staged = Path(graded_class["rows"]["_setup"]["staging"]) / "b_forged_artifacts_and_symlink" / SLUG
    assert sorted(p.name for p in staged.iterdir()) == [f"{SLUG}.ipynb"]  # a submission is its notebook only


def test_the_secret_reaches_no_learner_and_no_feedback(graded_class):
    seed = secret.heldout_seed()
    forms = [str(seed), hex(seed)]
    tmp = graded_class["tmp"]
    texts = [p.read_text(errors="ignore") for folder in ("autograded", "feedback") for p in (tmp / folder).rglob("*")
             if p.is_file() and p.suffix in (".ipynb", ".html")]
    texts.append(json.dumps({k: v for k, v in graded_class["rows"].items() if not k.startswith("_")}))
    assert texts and not [form for form in forms for text in texts if form in text]
    feedback = (tmp / "feedback" / "z_reference" / SLUG / f"{SLUG}.html").read_text()
    assert "check_in_kernel(" not in feedback and "assert_outcome(" not in feedback  # hidden tests stay hidden
    assert "graded by the course" in feedback


@pytest.mark.skipif(os.geteuid() != 0, reason="privilege separation needs root (CI and grading servers)")
def test_grading_ran_isolated(graded_class):
    setup = graded_class["rows"]["_setup"]
    assert setup["isolated"] and setup["learner_user"]
