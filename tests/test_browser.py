"""Students and instructors in a real browser: JupyterLab in headless Chromium, driven by Playwright.

One JupyterLab server (started as `make lab` starts it) serves a throw-away course folder for the whole
module: the repository's nbgrader config, `source/`, `release/`, and for each assignment a blank student
copy (the release notebook) and a solved one (the release notebook with the instructor's solutions in its
answer cells). What a student does is done with the mouse: the nbgrader "Validate" toolbar button, the
"Run > Run All Cells" menu, "File > Save Notebook".

- The release notebooks open unmodified: saved from JupyterLab, each is byte for byte what git holds.
- Validate on a blank copy: nbgrader's failure dialog, whose first failed cell is the first test cell.
- Validate on a solved copy: the success dialog.
- Run all on a solved copy: every code cell ran, no error output, every plot rendered as an image.
- The instructor's formgrader page lists the assignments.

`make test` runs a lean subset: the release notebooks, the quiz's blank Validate, the PyTorch lesson's
solved Validate and Run all (in quick mode, FTLAB_QUICK=1: every cell and every plot, less training), the
formgrader. `make test-browser` (`FTLAB_BROWSER_FULL=1`) runs every lesson both ways, "Run all" in normal
mode, the Keras lesson's included.

The browser: `FTLAB_CHROMIUM` (a Chromium/Chrome binary) if set, else Playwright's own Chromium if
`python -m playwright install chromium` has downloaded one, else Debian's `chromium` package
(`/usr/lib/chromium/chromium`; `.ci/run` installs it when missing). None found: the tests skip, saying so,
unless `FTLAB_BROWSER_REQUIRED=1` (set by `.ci/run`), which turns that into a failure.
Screenshots (and the page's HTML) of failed tests go to `FTLAB_ARTIFACTS` (default `test-artifacts/`).
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from autograder import notebooks
from conftest import REPO
from grading import notebook_name, release_notebook, solutions, with_answers

TOKEN = "fine-tuning-lab-browser-test"
ARTIFACTS = Path(os.environ.get("FTLAB_ARTIFACTS", REPO / "test-artifacts"))
FULL = os.environ.get("FTLAB_BROWSER_FULL") == "1"
REQUIRED = os.environ.get("FTLAB_BROWSER_REQUIRED") == "1"
# Flags that keep Chromium quiet and offline in a container running as root.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
DEBIAN_CHROMIUM = ("/usr/lib/chromium/chromium", "/usr/bin/chromium")  # the binary, then Debian's launcher
ASSIGNMENTS = ("pytorch_lesson", "quiz", "keras_lesson")
# The kernels share 2 cores with Chromium and the server: one math thread each, unless set. With the
# libraries' default (a thread per core) the PyTorch lesson's "Run all" took 390 s instead of 45 s on this
# 2-core machine while other work ran (benchmarks/pytorch_lesson.py; OpenMP threads spin-wait).
ONE_THREAD = {name: "1" for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                     "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")}
# `make test` runs the lessons in quick mode (course.quick_mode(): FTLAB_QUICK=1, what Validate and grading do
# anyway): "Run all" still runs every cell and draws every plot, on less data and fewer steps. Full: normal mode.
LESSON_MODE = {} if FULL else {"FTLAB_QUICK": "1"}
FULL_ONLY = pytest.mark.skipif(not FULL, reason="left out of `make test` to keep the suite short; "
                                                "`make test-browser` (FTLAB_BROWSER_FULL=1) runs it")


def no_browser(message: str):
    if REQUIRED:
        pytest.fail(f"{message} (FTLAB_BROWSER_REQUIRED=1)", pytrace=False)
    pytest.skip(message)


def find_chromium(playwright) -> str | None:
    """The executable to launch: None means Playwright's own download. Raises LookupError if none exists."""
    if os.environ.get("FTLAB_CHROMIUM"):
        if not os.access(os.environ["FTLAB_CHROMIUM"], os.X_OK):
            raise LookupError(f"FTLAB_CHROMIUM={os.environ['FTLAB_CHROMIUM']} is not an executable")
        return os.environ["FTLAB_CHROMIUM"]
    try:
        if Path(playwright.chromium.executable_path).exists():
            return None
    except Exception:  # noqa: BLE001 (no browser registry for this platform)
        pass
    for path in DEBIAN_CHROMIUM:
        # Ubuntu's /usr/bin/chromium* only launch a snap, which does not run in CI containers: not those.
        if os.access(path, os.X_OK) and "/snap/" not in os.path.realpath(path):
            return path
    raise LookupError("no Chromium for Playwright: install Debian's package (`apt-get install chromium`), "
                      "or download Playwright's (`python -m playwright install chromium`), "
                      "or set FTLAB_CHROMIUM=/path/to/chromium")


# -- the course folder and the server ------------------------------------------------------------------


def solved_notebook(assignment: str) -> dict:
    """The release notebook with the instructor's solutions in its answer cells: a student who got it all right."""
    return with_answers(release_notebook(assignment), solutions(assignment))


def first_test_cell(nb: dict) -> dict:
    return next(c for c in nb["cells"] if c.get("metadata", {}).get("nbgrader", {}).get("grade")
                and not c["metadata"]["nbgrader"].get("solution"))


def source_text(cell: dict) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def student_path(assignment: str, kind: str) -> str:
    """Where the student copies live, relative to the course folder (the server's root)."""
    return f"student/{assignment}/{kind}_{notebook_name(assignment)}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def course(tmp_path_factory) -> Path:
    course = tmp_path_factory.mktemp("browser") / "course"
    course.mkdir()
    shutil.copy(REPO / "nbgrader_config.py", course)
    for folder in ("source", "release"):
        shutil.copytree(REPO / folder, course / folder, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    version = platform.python_version()
    if version != notebooks.PYTHON_VERSION:
        # JupyterLab writes the kernel's Python version into language_info: with another Python than the
        # course's reference, make the copies say this one, so the check still covers every other key.
        for path in (course / "release").rglob("*.ipynb"):
            nb = json.loads(path.read_text())
            nb["metadata"]["language_info"]["version"] = version
            path.write_text(json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n")  # as Jupyter writes
    for assignment in ASSIGNMENTS:
        (course / "student" / assignment).mkdir(parents=True)
        for kind, nb in (("blank", release_notebook(assignment)), ("solved", solved_notebook(assignment))):
            (course / student_path(assignment, kind)).write_text(json.dumps(nb, indent=1))
    return course


@pytest.fixture(scope="module")
def server(course, tmp_path_factory):
    """JupyterLab on the course folder, as `make lab` starts it (the course's nbgrader config is in its cwd)."""
    port = free_port()
    settings = tmp_path_factory.mktemp("lab-user-settings")
    # No "Would you like to get notified about official Jupyter news?" toast over the notebook, no update check.
    (settings / "@jupyterlab" / "apputils-extension").mkdir(parents=True)
    (settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    as_root = ["--allow-root"] if os.geteuid() == 0 else []
    log = open(course.parent / "jupyterlab.log", "w")
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "jupyter"), "lab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
         f"--IdentityProvider.token={TOKEN}", f"--notebook-dir={course}", f"--LabApp.user_settings_dir={settings}",
         f"--LabApp.workspaces_dir={settings / 'workspaces'}",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate", *as_root],
        cwd=course, stdout=log, stderr=subprocess.STDOUT, env={**ONE_THREAD, **os.environ, **LESSON_MODE})
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(urllib.request.Request(f"{base}/api/status", headers={
                    "Authorization": f"token {TOKEN}"}), timeout=5)
                break
            except OSError:
                if proc.poll() is not None:
                    pytest.fail(f"jupyter lab exited: {(course.parent / 'jupyterlab.log').read_text()[-3000:]}")
                time.sleep(0.25)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")
    with sync_api.sync_playwright() as playwright:
        try:
            executable = find_chromium(playwright)
        except LookupError as missing:
            no_browser(str(missing))
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, server, request):
    """A fresh browser context, logged in; a screenshot and the page's HTML are kept when the test fails."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(60_000)
    page = context.new_page()
    page.goto(f"{server}/api/status?token={TOKEN}")  # sets the login cookie
    failed_before = request.session.testsfailed
    yield page
    if request.session.testsfailed > failed_before:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        name = request.node.name.replace("/", "_").replace("[", "-").replace("]", "")
        try:
            page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
            (ARTIFACTS / f"{name}.html").write_text(page.content())
        except Exception as error:  # noqa: BLE001 (the page may be gone; the test's own failure matters more)
            print(f"could not keep a screenshot of {name}: {error}")
    context.close()


# -- what a user does in JupyterLab --------------------------------------------------------------------


def open_notebooks(page, server: str, workspace: str, *paths: str, kernels: bool = True):
    """Open the notebooks ``paths`` as tabs of a new workspace (one page load; the first tab is active) and,
    with ``kernels``, wait until every kernel is idle."""
    widgets = [f"notebook:{path}" for path in paths]
    layout = {"data": {"layout-restorer:data": {"main": {"dock": {"type": "tab-area", "currentIndex": 0,
                                                                  "widgets": widgets}, "current": widgets[0]}},
                       **{w: {"data": {"path": p, "factory": "Notebook"}} for w, p in zip(widgets, paths)}},
              "metadata": {"id": workspace}}
    response = page.request.put(f"{server}/lab/api/workspaces/{workspace}", data=json.dumps(layout),
                                headers={"Authorization": f"token {TOKEN}", "Content-Type": "application/json"})
    assert response.ok, response.text()
    page.goto(f"{server}/lab/workspaces/{workspace}")
    page.wait_for_function(f"() => document.querySelectorAll('.jp-NotebookPanel .jp-Cell').length > 0 && "
                           f"document.querySelectorAll('.jp-NotebookPanel').length === {len(paths)}")
    if not kernels:
        return
    # The toolbar's indicator says "idle" before a kernel even exists: ask the server whether each
    # notebook's kernel has started and is idle, then give the page the kernel's info reply.
    deadline = time.monotonic() + 120
    while True:
        sessions = page.request.get(f"{server}/api/sessions", headers={"Authorization": f"token {TOKEN}"}).json()
        idle = {s["path"] for s in sessions if (s.get("kernel") or {}).get("execution_state") == "idle"}
        if set(paths) <= idle:
            break
        assert time.monotonic() < deadline, f"kernels not idle after 120 s: {sessions}"
        page.wait_for_timeout(250)
    page.wait_for_function("() => [...document.querySelectorAll('.jp-Notebook-ExecutionIndicator')].every("
                           "i => i.dataset.status === 'idle')")
    page.wait_for_timeout(1000)


def menu(page, top: str, command: str):
    page.locator(".lm-MenuBar-itemLabel", has_text=top).first.click()
    page.locator(f".lm-Menu-item[data-command='{command}']").first.click()


def save(page):
    menu(page, "File", "docmanager:save")
    page.wait_for_function("() => !document.querySelector('.lm-TabBar-tab.jp-mod-dirty')")


def validate(page, timeout_s: float = 300) -> dict:
    """Press Validate; returns the result dialog's classes, its text and its failed cells (source, error)."""
    toolbar_item = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Toolbar-item", has_text="Validate")
    toolbar_item.locator("jp-button, button").first.click()
    message = page.locator(".jp-Dialog #validation-message")
    message.wait_for(timeout=timeout_s * 1000)
    pres = message.locator(".jp-RenderedText pre").all_inner_texts()
    # Each failed cell: <p>The following cell failed:</p>, then its source and its error, each in a <pre>.
    result = {"classes": message.get_attribute("class").split(), "text": message.inner_text(),
              "failed": list(zip(pres[0::2], pres[1::2]))}
    page.locator(".jp-Dialog .jp-mod-accept").click()
    page.locator(".jp-Dialog").wait_for(state="detached")
    return result


def run_all(page, timeout_s: float = 600):
    """Run > Run All Cells, then wait until no cell is queued or running."""
    menu(page, "Run", "runmenu:run-all")
    page.wait_for_function("""() => {
        const prompts = [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')].map(p => p.textContent.trim());
        return prompts.length > 0 && !prompts.some(p => p.includes('*')) && !prompts.every(p => p === '[ ]:' || p === '');
    }""", timeout=timeout_s * 1000, polling=500)
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']")


def rendered_images(page) -> list[dict]:
    """Every image in an output area, scrolled into view first (JupyterLab renders lazily)."""
    images = page.locator(".jp-OutputArea-output img")
    found = []
    for i in range(images.count()):
        image = images.nth(i)
        image.scroll_into_view_if_needed()
        image.evaluate("img => img.decode().catch(() => null)")
        found.append(image.evaluate(
            "img => ({complete: img.complete, width: img.naturalWidth, height: img.naturalHeight})"))
    return found


# -- the tests -----------------------------------------------------------------------------------------


def test_release_notebooks_open_unmodified(page, server, course):
    """Once a kernel is up, JupyterLab writes its kernelspec and language_info into the notebook's model: the
    release notebooks already hold exactly that, so saving them in JupyterLab (as autosave would) rewrites
    each byte for byte: an instructor's `git status` stays clean. Control: a notebook with the metadata the
    course used to have does change. (The dirty mark on a tab is not used: when the kernel answers before
    the notebook has loaded, JupyterLab clears it again.)"""
    paths = [f"release/{a}/{notebook_name(a)}" for a in ASSIGNMENTS]
    control = course / "student" / "control" / "old_metadata.ipynb"
    control.parent.mkdir(exist_ok=True)
    nb = release_notebook("quiz")
    nb["metadata"]["language_info"] = {"name": "python"}
    control.write_text(json.dumps(nb))
    paths.append(str(control.relative_to(course)))
    before = {path: (course / path).read_bytes() for path in paths}
    open_notebooks(page, server, "release", *paths)
    menu(page, "File", "docmanager:save-all")
    page.wait_for_function("() => !document.querySelector('.lm-TabBar-tab.jp-mod-dirty')")
    page.wait_for_timeout(500)
    after = {path: (course / path).read_bytes() for path in paths}
    assert json.loads(after[paths[-1]])["metadata"]["language_info"]["mimetype"] == "text/x-python", "control unchanged"
    assert [p for p in paths[:-1] if after[p] != before[p]] == []


@pytest.mark.parametrize("assignment", ["quiz", pytest.param("pytorch_lesson", marks=FULL_ONLY),
                                        pytest.param("keras_lesson", marks=FULL_ONLY)])
def test_validate_a_blank_copy_names_the_first_failing_exercise(page, server, assignment):
    """What a student who has not started sees: nbgrader's failure dialog, the first failed cell being the
    notebook's first test cell."""
    open_notebooks(page, server, f"blank-{assignment}", student_path(assignment, "blank"), kernels=False)
    result = validate(page)
    expected = source_text(first_test_cell(release_notebook(assignment))).strip()
    assert "validation-failed" in result["classes"], result["text"][:2000]
    assert result["failed"], result["text"][:2000]
    source, error = result["failed"][0]
    assert source.strip() == expected, source
    assert error.strip(), "the dialog shows no error for the first failed cell"


@pytest.mark.parametrize("assignment", ["pytorch_lesson", pytest.param("quiz", marks=FULL_ONLY),
                                        pytest.param("keras_lesson", marks=FULL_ONLY)])
def test_validate_then_run_all_on_a_solved_copy(page, server, course, assignment):
    """A student who got everything right: the success dialog, then Run > Run All Cells runs every code cell
    without an error output, and each image output is on the page, decoded."""
    path = student_path(assignment, "solved")
    open_notebooks(page, server, f"solved-{assignment}", path)
    result = validate(page)
    assert "validation-success" in result["classes"], result["text"][:3000]
    assert "Success! Your notebook passes all the tests." in result["text"]
    run_all(page)
    save(page)
    saved = json.loads((course / path).read_text())
    code = [c for c in saved["cells"] if c["cell_type"] == "code"]
    errors = [(i, o.get("ename"), o.get("evalue")) for i, c in enumerate(code) for o in c["outputs"]
              if o["output_type"] == "error"]
    assert errors == []
    assert [i for i, c in enumerate(code) if c["execution_count"] is None] == [], "cells that did not run"
    plots = sum("image/png" in o.get("data", {}) for c in code for o in c["outputs"])
    if assignment != "quiz":
        assert plots > 0, "the lesson drew no plot"
    images = rendered_images(page)
    assert len(images) == plots, f"{plots} image outputs, {len(images)} images on the page"
    assert all(i["complete"] and i["width"] > 0 and i["height"] > 0 for i in images), images


def test_formgrader_lists_the_assignments(page, server):
    """The instructor's view: Nbgrader > Formgrader opens a panel whose table lists every assignment."""
    page.goto(f"{server}/lab/workspaces/formgrader/tree/release?reset")
    page.wait_for_selector(".jp-DirListing-content")
    menu(page, "Nbgrader", "nbgrader:open-formgrader")
    frame = page.frame_locator("iframe").first
    frame.locator("td.name a").first.wait_for()
    assert set(ASSIGNMENTS) <= set(frame.locator("td.name").all_inner_texts())
