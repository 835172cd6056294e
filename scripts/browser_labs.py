"""Open every lab notebook in real JupyterLab in Chromium, run it as a learner would, try every control.

    python scripts/browser_labs.py [--out build/browser] [slug ...]

A lab notebook is one of course/ that calls a `*_lab_widget` (so the RLHF and Distillation Labs join when they
land). For each: a working copy of the released notebook with the exercises filled in from the reference
solutions (a learner who has done them) and its test cells holding the hidden tests again (the notebook as
nbgrader grades it), the preset injected as papermill injects it (`PRESET = "cpu"`), JupyterLab started on that
copy (a server per notebook, so a notebook's environment, e.g. 05's forced float32 path, is its own), the
notebook opened in Chromium (Debian's package, driven by Playwright), Run > Run All Cells from the menu bar,
File > Save Notebook, then every slider, drop-down, toggle, check box and button of the lab tried in turn.
After each one the lab's readout and figure are compared with before, and the lab's error area (where a
callback's exception is shown) must stay empty. Screenshots and report-<notebook>.json go to --out. Exit status 1 when
anything failed; the report says what.

The saved notebook and its working folder (artifacts, course_results.json) are kept when `run` is given a
`keep` folder: the test suite's nbgrader round trip grades that execution instead of running the notebook a
second time under papermill (tests/conftest.py, `executed_solution`).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("FTCOURSE_CHROMIUM", "/usr/bin/chromium")
# One notebook's Run All: a hang guard, not a speed goal (CI's own limit caps the whole run). 06 took 15.3 min on
# a quiet 2-core EPYC without AVX512; a busy host is ~1.3x slower, which a 20-minute guard did not allow for.
RUN_TIMEOUT_S = 35 * 60
CONTROL_TIMEOUT_S = 180  # one control's effect (the perplexity button measures the whole model)

# JupyterLab settings a first-time learner would not want in the way: no news pop-up, no update check, and every
# cell kept in the page (JupyterLab 4 renders only visible cells by default, which a test cannot wait on); each
# cell's execution times recorded in the saved notebook (where a lab notebook's time goes, as papermill records it).
SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none", "recordTiming": True},
}


def lab_notebooks(course: Path = ROOT / "course") -> list[str]:
    """Slugs of the released notebooks that show a lab widget."""
    return sorted(p.parent.name for p in course.glob("[0-9][0-9]_*/*.ipynb")
                  if p.stem == p.parent.name and "_lab_widget(" in p.read_text())


def learner_copy(slug: str, work: Path, preset: str = "cpu") -> Path:
    """course/<slug>/ copied to `work`/<slug>/, its solution cells holding the reference solutions' code and its
    test cells the full tests (hidden ones included), the source's `course-record` cells appended (they are its last
    cells), with `PRESET = preset` injected as papermill injects it."""
    import jupytext
    import nbformat
    from papermill.parameterize import parameterize_notebook

    from ftcourse.reporting import is_record_cell

    source = jupytext.read(ROOT / "solutions" / slug / f"{slug}.py")
    solved = {c.metadata["nbgrader"]["grade_id"]: c.source for c in source.cells
              if c.metadata.get("nbgrader", {}).get("solution") or c.metadata.get("nbgrader", {}).get("grade")}
    nb = nbformat.read(ROOT / "course" / slug / f"{slug}.ipynb", as_version=4)
    restored = 0
    for cell in nb.cells:
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
        if grade_id in solved and (cell.metadata["nbgrader"].get("solution") or cell.metadata["nbgrader"].get("grade")):
            cell.source = solved[grade_id]
            restored += 1
    if restored != len(solved):
        raise RuntimeError(f"{slug}: {len(solved) - restored} graded cells of the solution are not in the release")
    # the instructor's `course-record` cells (the course table's record; not released), run last as in the source
    nb.cells += [nbformat.v4.new_code_cell(c.source, metadata={"tags": list(c.metadata["tags"])})
                 for c in source.cells if is_record_cell(c)]
    nb.metadata.setdefault("papermill", {})  # what papermill's loader adds before it parameterizes
    for cell in nb.cells:
        cell.metadata.setdefault("tags", [])
    nb = parameterize_notebook(nb, {"PRESET": preset}, kernel_name="python3", language="python")
    for cell in nb.cells:
        if not cell.metadata.get("tags"):
            cell.metadata.pop("tags", None)
    folder = work / slug
    folder.mkdir(parents=True, exist_ok=True)
    for extra in (ROOT / "course" / slug).iterdir():
        if extra.name != f"{slug}.ipynb" and extra.is_file():
            shutil.copy(extra, folder / extra.name)
    path = folder / f"{slug}.ipynb"
    nbformat.write(nb, path)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_lab(root: Path, state: Path, extra_env: dict | None = None) -> tuple[subprocess.Popen, str, str]:
    """JupyterLab on `root` with the settings above (its kernels get `extra_env` too); returns the process, its URL
    and its token."""
    settings = state / "settings"
    for name, value in SETTINGS.items():
        (settings / name).parent.mkdir(parents=True, exist_ok=True)
        (settings / name).write_text(json.dumps(value))
    port, token = _free_port(), f"ftcourse-browser-test-{secrets.token_hex(8)}"  # a token of its own: another
    # JupyterLab started beside it (a second test worker) cannot answer for it
    env = {**os.environ, "JUPYTERLAB_SETTINGS_DIR": str(settings), "JUPYTERLAB_WORKSPACES_DIR": str(state / "workspaces"),
           "JUPYTER_CONFIG_DIR": str(state / "config"), "JUPYTER_RUNTIME_DIR": str(state / "runtime"),
           **(extra_env or {})}
    log = open(state / "jupyterlab.log", "w")
    process = subprocess.Popen([sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}",
                                "--ServerApp.port_retries=0", "--ip=127.0.0.1", f"--ServerApp.token={token}",
                                f"--ServerApp.root_dir={root}", "--ServerApp.password=", "--LabApp.news_url=None",
                                "--allow-root"],
                               env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
            return process, url, token
        except OSError:
            if process.poll() is not None:
                raise RuntimeError(f"JupyterLab exited: see {state / 'jupyterlab.log'}")
            time.sleep(0.5)
    raise RuntimeError(f"JupyterLab did not answer in 120 s: see {state / 'jupyterlab.log'}")


PANEL = ".jp-NotebookPanel:not(.lm-mod-hidden)"  # the notebook in front
PROMPTS_JS = """() => [...document.querySelectorAll('%s .jp-CodeCell .jp-InputPrompt')]
                     .map(p => p.textContent.trim())""" % PANEL


def shut_down_kernels(url: str, token: str) -> None:
    """End every kernel session (a finished notebook's kernel would hold its memory while the next one runs)."""
    headers = {"Authorization": f"token {token}"}
    sessions = json.loads(urllib.request.urlopen(urllib.request.Request(f"{url}/api/sessions", headers=headers)).read())
    for session in sessions:
        urllib.request.urlopen(urllib.request.Request(f"{url}/api/sessions/{session['id']}", headers=headers,
                                                      method="DELETE"))


def run_all(page, report: dict) -> None:
    """Run > Run All Cells, then wait until no cell is queued or running."""
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    page.locator(".lm-Menu .lm-Menu-itemLabel").get_by_text("Run All Cells", exact=True).click()
    start, quiet = time.time(), 0
    while time.time() - start < RUN_TIMEOUT_S:
        time.sleep(3)
        prompts = page.evaluate(PROMPTS_JS)
        busy = any("*" in p for p in prompts)
        quiet = 0 if busy else quiet + 1
        if quiet >= 3:  # nine seconds without a queued or running cell
            break
    else:
        raise TimeoutError(f"Run All did not finish in {RUN_TIMEOUT_S} s")
    report["run_all_s"] = round(time.time() - start, 1)
    report["cells_run"] = sum(p not in ("[ ]:", "") for p in prompts)
    report["code_cells"] = len(prompts)


def save_and_read(page, path: Path, code_cells: int) -> dict:
    """File > Save Notebook, then wait until the file on disk holds the executed notebook."""
    before = path.stat().st_mtime
    page.locator(".lm-MenuBar-itemLabel", has_text="File").first.click()
    page.locator(".lm-Menu .lm-Menu-itemLabel").get_by_text("Save Notebook", exact=True).click()
    nb = None
    for _ in range(120):
        time.sleep(0.5)
        if path.stat().st_mtime != before:
            try:
                nb = json.loads(path.read_text())
            except ValueError:  # caught mid-write
                continue
            counts = [c.get("execution_count") for c in nb["cells"] if c["cell_type"] == "code"]
            if len(counts) == code_cells and all(counts):
                return nb
    seen = saved_problems(nb) if nb else {}  # Run All stops at a failing cell: say which
    raise TimeoutError(f"the saved {path.name} did not show every code cell executed within 60 s"
                       + (f"; {'; '.join(seen['errors'])[:500]}" if seen.get("errors") else ""))


def saved_problems(nb: dict) -> dict:
    """The saved notebook's error outputs and stderr streams (what the learner saw in red)."""
    errors, stderr = [], []
    for i, cell in enumerate(nb["cells"]):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                errors.append(f"cell {i}: {out.get('ename')}: {out.get('evalue')}")
            elif out.get("output_type") == "stream" and out.get("name") == "stderr":
                stderr.append(f"cell {i}: {''.join(out.get('text', ''))[:300]}")
    return {"errors": errors, "stderr": stderr}


def _state(lab) -> tuple[str, str, str]:
    return (lab.locator(".ftcourse-lab-readout").inner_text(), lab.locator(".ftcourse-lab-figure").get_attribute("src") or "",
            lab.locator(".ftcourse-lab-errors").inner_text().strip())


def _controls(lab) -> list[tuple[str, object, str]]:
    """(kind, locator, label) of every control in the lab, in page order."""
    found = []
    for kind, selector in (("slider", ".widget-slider"), ("dropdown", ".widget-dropdown"),
                           ("toggle", ".widget-toggle-buttons"), ("checkbox", ".widget-checkbox"),
                           ("button", "button.widget-button")):
        for i in range(lab.locator(selector).count()):
            control = lab.locator(selector).nth(i)
            label = control.locator(".widget-label").first.inner_text() if kind != "button" else control.inner_text()
            if kind == "checkbox":
                label = control.inner_text().strip() or label
            found.append((kind, control, label.strip()))
    return found


def _act(page, kind: str, control, step: int) -> str:
    """Change one control the way a learner would; return what was done."""
    if kind == "slider":
        handle = control.locator(".noUi-handle").first
        now, top = (float(handle.get_attribute(a) or 0) for a in ("aria-valuenow", "aria-valuemax"))
        handle.click()
        key = "ArrowLeft" if now >= top else "ArrowRight"  # away from the end it sits at
        page.keyboard.press(key)
        return f"handle focused, {key}"
    if kind == "dropdown":
        select = control.locator("select")
        current = select.evaluate("s => s.selectedIndex")
        options = select.locator("option").count()
        target = options - 1 if current != options - 1 else 0
        select.select_option(index=target)
        return f"option {current} -> {target} ({select.locator('option').nth(target).inner_text()})"
    if kind == "toggle":
        choice = control.locator("button:not(.mod-active)").first
        name = choice.inner_text()
        choice.click()
        return f"clicked {name}"
    if kind == "checkbox":
        control.locator("input").click()
        return "clicked"
    control.click()
    return "clicked"


def _settle(lab, before: tuple, busy, quiet_s: float = 3.0) -> tuple:
    """The lab's state once a control's effect has arrived and nothing has moved for `quiet_s` (the readout and
    the figure arrive as separate messages; a button is busy while it is disabled)."""
    deadline = time.time() + CONTROL_TIMEOUT_S
    after = _state(lab)
    while after[:2] == before[:2] and not after[2] and time.time() < deadline:
        time.sleep(0.5)
        after = _state(lab)
    still_since = time.time()
    while time.time() < deadline and time.time() - still_since < quiet_s:
        time.sleep(0.5)
        now = _state(lab)
        if now != after or busy():
            after, still_since = now, time.time()
    return after


def try_lab(page, slug: str, out: Path, report: dict) -> None:
    lab = page.locator(f"{PANEL} .ftcourse-lab").first
    lab.wait_for(timeout=60_000)
    lab.scroll_into_view_if_needed()
    before = _state(lab)
    lab.screenshot(path=str(out / f"{slug}-0-start.png"))
    report["start"] = {"readout": before[0], "errors": before[2]}
    report["controls"] = []
    steps = [(kind, control, label, "") for kind, control, label in _controls(lab)]
    # a check box is clicked, then clicked back: only one is ever off (a lab may need at least one on)
    steps = [s for kind, control, label, _ in steps
             for s in ([(kind, control, label, "off"), (kind, control, label, "back on")] if kind == "checkbox"
                       else [(kind, control, label, "")])]
    for step, (kind, control, label, phase) in enumerate(steps, start=1):
        control.scroll_into_view_if_needed()
        action = _act(page, kind, control, step) + (f" ({phase})" if phase else "")
        after = _settle(lab, before, busy=control.is_disabled if kind == "button" else (lambda: False))
        shot = out / f"{slug}-{step}-{kind}-{''.join(c if c.isalnum() else '_' for c in label + phase)[:30]}.png"
        lab.screenshot(path=str(shot))
        report["controls"].append({"kind": kind, "label": label, "action": action,
                                   "readout_changed": after[0] != before[0], "figure_changed": after[1] != before[1],
                                   "error": after[2], "readout": after[0], "screenshot": str(shot.relative_to(ROOT))
                                   if shot.is_relative_to(ROOT) else str(shot)})
        before = after


def run(slugs: list[str], out: Path, keep: Path | None = None, envs: dict[str, dict] | None = None) -> dict:
    """Each notebook in a JupyterLab of its own (its kernel's environment: os.environ plus `envs[slug]`). With
    `keep`, the working copies stay there: `keep/<slug>/` is the notebook's working folder and
    `keep/<slug>.executed.ipynb` the notebook as saved after Run All (before any control was touched)."""
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    for slug in slugs:  # this run's notebooks' old screenshots (another run may be writing the others')
        for old in out.glob(f"{slug}-*.png"):
            old.unlink()
    results: dict = {"chromium": CHROMIUM, "notebooks": {}}
    with tempfile.TemporaryDirectory(prefix="ftcourse-browser-") as tmp:
        work, state_root = (keep or Path(tmp) / "course"), Path(tmp) / "state"
        work.mkdir(parents=True, exist_ok=True)
        paths = {slug: learner_copy(slug, work) for slug in slugs}
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"], headless=True)
            for slug in slugs:
                report: dict = {}
                results["notebooks"][slug] = report
                state = state_root / slug
                state.mkdir(parents=True)
                try:
                    process, url, token = start_lab(work, state, (envs or {}).get(slug))
                except RuntimeError as error:
                    report.update(failure=f"JupyterLab did not start: {error}", page_errors=[])
                    continue
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page_errors: list[str] = []
                page.on("pageerror", lambda e: page_errors.append(str(e)))
                try:
                    # a workspace of its own, reset: the notebook opens alone, as on a learner's first visit
                    page.goto(f"{url}/lab/workspaces/{slug}/tree/{slug}/{paths[slug].name}?reset&token={token}")
                    page.locator(f"{PANEL} .jp-Cell").first.wait_for(timeout=120_000)
                    page.wait_for_selector(".jp-Notebook-ExecutionIndicator, .jp-KernelStatus, .jp-Toolbar", timeout=60_000)
                    time.sleep(3)
                    report["dialog_on_open"] = page.locator(".jp-Dialog").count() > 0
                    page.screenshot(path=str(out / f"{slug}-opened.png"))
                    run_all(page, report)
                    saved = save_and_read(page, paths[slug], report["code_cells"])
                    (work / f"{slug}.executed.ipynb").write_text(json.dumps(saved, indent=1))
                    report["executed"] = str(work / f"{slug}.executed.ipynb")
                    report.update(saved_problems(saved))
                    try_lab(page, slug, out, report)
                    report["dialog_at_end"] = page.locator(".jp-Dialog").count() > 0
                    page.screenshot(path=str(out / f"{slug}-end.png"), full_page=False)
                except Exception as error:  # recorded; the next notebook still runs
                    report["failure"] = f"{type(error).__name__}: {error}"
                    page.screenshot(path=str(out / f"{slug}-failure.png"))
                finally:  # each step on its own: a dead server must not leave the others undone
                    report["page_errors"] = page_errors
                    for step in (page.close, lambda: shut_down_kernels(url, token),
                                 lambda: os.killpg(process.pid, 15), lambda: process.wait(timeout=30),
                                 lambda: process.kill(), lambda: shutil.copy(state / "jupyterlab.log",
                                                                             out / f"jupyterlab-{slug}.log")):
                        try:
                            step()
                        except Exception as error:  # noqa: BLE001 - recorded, the next notebook still runs
                            report.setdefault("teardown", []).append(f"{type(error).__name__}: {error}")
            browser.close()
    results["problems"] = problems(results)
    for slug, report in results["notebooks"].items():  # a file per notebook: runs of other notebooks may share `out`
        mine = [p for p in results["problems"] if p.startswith(f"{slug}:")]
        (out / f"report-{slug}.json").write_text(json.dumps({"chromium": CHROMIUM, "notebooks": {slug: report},
                                                             "problems": mine}, indent=1))
    return results


def problems(results: dict) -> list[str]:
    """Everything that a learner would have met as a failure."""
    found = []
    for slug, r in results["notebooks"].items():
        if "failure" in r:
            found.append(f"{slug}: {r['failure']}")
            continue
        if r.get("dialog_on_open") or r.get("dialog_at_end"):
            found.append(f"{slug}: a dialog opened ({'with the notebook: kernel selection?' if r.get('dialog_on_open') else 'while the lab was tried'})")
        found += [f"{slug}: stderr in {e}" for e in r.get("stderr", [])]
        found += [f"{slug}: JavaScript error in the page: {e[:300]}" for e in r.get("page_errors", [])]
        if r.get("start", {}).get("errors"):
            found.append(f"{slug}: the lab showed an error before any control was touched: {r['start']['errors'][-300:]}")
        if r.get("cells_run") != r.get("code_cells"):
            found.append(f"{slug}: Run All ran {r.get('cells_run')} of {r.get('code_cells')} code cells")
        found += [f"{slug}: {e}" for e in r.get("errors", [])]
        if not r.get("controls"):
            found.append(f"{slug}: no control found in the lab")
        for c in r.get("controls", []):
            if c["error"]:
                found.append(f"{slug}: {c['kind']} {c['label']!r} showed an error: {c['error'][-300:]}")
            elif not (c["readout_changed"] and c["figure_changed"]):
                unchanged = " and ".join(k for k in ("readout", "figure") if not c[f"{k}_changed"])
                found.append(f"{slug}: {c['kind']} {c['label']!r} ({c['action']}) left the {unchanged} unchanged")
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("slugs", nargs="*")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "browser")
    parser.add_argument("--keep", type=Path, help="keep the executed copies and their working folders here")
    args = parser.parse_args()
    if "FTCOURSE_HELDOUT_SEED" not in os.environ:  # the hidden tests grade held-out data: the public test seed, as
        from ftcourse.grading.secret import public_test_env  # `make course` and the tests use it

        os.environ.update(public_test_env())
    results = run(args.slugs or lab_notebooks(), args.out, keep=args.keep)
    for slug, r in results["notebooks"].items():
        print(f"{slug}: Run All {r.get('run_all_s')} s, {r.get('cells_run')}/{r.get('code_cells')} cells")
        for c in r.get("controls", []):
            print(f"  {c['kind']:8} {c['label'][:24]:24} {c['action'][:40]:40} readout {'changed' if c['readout_changed'] else 'same':7}"
                  f" figure {'changed' if c['figure_changed'] else 'same'}")
    print("\n".join(results["problems"]) or "no problems")
    return 1 if results["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
