"""Tamper-proof verdicts: re-grade a submission in a fresh process that runs only the student's definitions.

    from autograder.checker import check_submission
    verdicts = check_submission(Path("source/quiz/quiz.ipynb"), Path("submitted/alice/quiz/quiz.ipynb"))
    verdicts["correct_q1"]  -> {"passed": False, "message": "...", "output": "...", "sandbox": "..."}

    python -m autograder.checker SOURCE_NB SUBMITTED_NB      # the same, printed as JSON

One verdict for every graded test cell (``grade: true, solution: false``) of the SOURCE notebook, whatever
the submission did to its own copy of the test cells (edited, deleted, duplicated: they are never run).

How it works
------------
This process (the parent) reads both notebooks and sends a child process one JSON job: a process forked by
the run's checker server (``autograder.checker_server``, which imported the frameworks once; the grading
pipeline starts it and sets $FTLAB_CHECKER_SERVER) and confined by ``sandbox.fork_confined``, or else a
fresh ``python -I -m autograder.checker_child`` through ``autograder.sandbox.wrap``, the job on its stdin.
Both run ``autograder.checker_child.run``. The job holds:

* from the instructor's source notebook: the ``import``, ``def``/``class`` and literal-assignment
  statements of its non-answer code cells (never one that binds a name an answer cell defines, so a
  worked example cannot stand in for a missing answer), and the full source of every test cell, hidden
  tests included (``### AUTOTEST`` cells are failed with a message: the checker does not expand them);
* from the submission: only the top-level statements of the answer cells (matched by ``grade_id``; a
  missing answer cell counts as empty) and of cells the student added, that are ``def``, ``class``,
  ``import``/``from ... import`` or an assignment of a literal (``answer_q1 = "B"``, ``n = 3``) to plain
  names. Literal values are bound with ``ast.literal_eval``: no student code runs for them. Every other
  top-level statement never runs, and failing verdicts name the ignored lines. Imports from
  ``course.checks`` and ``autograder`` are ignored too (they hold the judges, not answers).

The child imports the frameworks and check modules first (a forked child finds them imported), then snapshots what student code could patch
(the dicts of the builtins module, of torch/numpy/keras/tensorflow/course modules and of every class they
define, the code and defaults of the key torch/keras methods and of the course's functions, sys.modules,
import hooks, trace/profile functions, signal handlers, warning filters, os.environ, the working folder,
grad mode and default dtypes). Definition-time code of ``def``/``class`` statements (decorators, default
values, class bodies) DOES run when they load; the snapshot is restored right after each answer cell
loads, and again after every call of a student function made from a test cell and after every test cell.
Each test cell runs in a fresh namespace with a fresh copy of the builtins dict: the instructor's bindings,
over the student's bindings minus any that shadow a builtin or an instructor name, and minus objects whose
class (or metaclass) the student made (they could compare equal to anything). Student functions are
handed to the test cells wrapped, so that state is restored the moment a call returns.

A test cell passes iff it raises nothing within its time limit; its message is the AssertionError's text
(or ``Type: text``); its output is what it printed (worked solutions, for the feedback), at most 20,000
characters. Verdicts travel on a dedicated pipe, tagged with a random nonce the parent sends on
stdin before any student code loads; the child keeps both only inside a closure, and prints on
stdout/stderr are ignored. The parent accepts a verdict only for the cell the child announced it was
running, once; anything else fails the cell as tampering. If the child dies (``os._exit``, ``sys.exit``
escaping, a segfault) or overruns a cell's limit, the parent kills its process group, fails that cell
with the reason and starts a new child for the remaining cells (at most ``MAX_RELAUNCHES`` times).

What student code cannot do here, and what remains possible (README text for instructors)
----------------------------------------------------------------------------------------
Protected: top-level patches of any kind (they never run); redefined builtins (test cells use their own
builtins dict, check modules use references captured at import, a student ``def sum`` is not passed to
test cells); patched methods, attributes and descriptors of the snapshotted classes and modules, whether
done at definition time or inside a student function (restored before the checks look); IPython input
transformers, ``showtraceback``, custom exception display (there is no IPython shell in the child, and
their top-level installation never runs); edited, deleted or duplicated test cells (the source's run);
``sys.exit``/``os._exit``/crashes (that cell fails, the rest are graded); infinite loops (per-cell and
per-submission limits); printed or written fake verdicts (no nonce); quiz answers bound to objects that
equal anything (``from unittest.mock import ANY as answer_q1``). An audit hook refuses to student code
new audit hooks, direct frame and code-object access (``sys._getframe``, ``tb_frame``, ``gi_frame``,
``__code__``, also through ``inspect``/``traceback``/``logging`` frame helpers), ``compile``/``exec``,
``marshal``; and, while a student function is running, ``gc.get_objects``/``get_referrers``, ``ctypes``,
``sys.settrace``/``setprofile``, starting processes and sending signals. A student function that starts
a thread fails the test cell that called it (and the child is replaced before the next cell).

Not protected, in-process: student code runs in the same interpreter as the checks. Code that, when a
check calls it, obtains a frame by a route the audit hook does not see (a signal handler's ``frame``
argument, a third-party helper that returns frames, ``__del__`` run from checker code) and then follows
``f_back``/``f_locals`` (not audited by CPython) can in principle find the nonce and report function, or
rewrite the snapshot or the objects the checks hold, and so forge verdicts; so can objects the student
returns (custom subclasses whose methods run later) and patches of library state outside the snapshot
(nested containers, C-level state). These need deliberate interpreter-level attacks, not the ordinary
patches this course has seen. A check module stays sound only if it judges through the references it captured at import and
on objects it built itself. Bounding what such code can reach (the course files, the network, other
students' work) and how much time and memory it uses is the job of the OS sandbox (``autograder.sandbox``);
without it (reported in each verdict's ``sandbox`` field) the child runs as the grading user.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from autograder import checker_server

CELL_TIMEOUT = 180.0          # seconds per test cell (nbgrader_config.py's Execute.timeout)
KILL_GRACE = 5.0              # the child's own soft limit fires first; the parent kills this much later
MAX_RELAUNCHES = 8            # new child processes after a death or a killed cell, per submission
STDERR_TAIL = 4000
FORBIDDEN_IMPORT_PREFIXES = ("course.checks", "autograder")
FRAMEWORK_IMPORT_ORDER = ("numpy",)


# ---- reading notebooks --------------------------------------------------------------------------------
def nbgrader_meta(cell) -> dict:
    meta = cell.get("metadata") if isinstance(cell, dict) else None
    value = meta.get("nbgrader") if isinstance(meta, dict) else None
    return value if isinstance(value, dict) else {}


def cell_source(cell) -> str:
    source = cell.get("source", "") if isinstance(cell, dict) else ""
    if isinstance(source, list):
        return "".join(s for s in source if isinstance(s, str))
    return source if isinstance(source, str) else ""


def code_cells(notebook) -> list:
    cells = notebook.get("cells") if isinstance(notebook, dict) else None
    return [c for c in cells if isinstance(c, dict) and c.get("cell_type") == "code"] if isinstance(cells, list) else []


def is_test_cell(cell) -> bool:
    meta = nbgrader_meta(cell)
    return bool(meta.get("grade")) and not meta.get("solution") and isinstance(meta.get("grade_id"), str)


def is_answer_cell(cell) -> bool:
    meta = nbgrader_meta(cell)
    return bool(meta.get("solution")) and isinstance(meta.get("grade_id"), str)


def graded_test_ids(notebook) -> list[str]:
    """grade ids of every graded test cell (code or markdown) in the order of the notebook."""
    cells = notebook.get("cells", []) if isinstance(notebook, dict) else []
    return [nbgrader_meta(c)["grade_id"] for c in cells if is_test_cell(c)]


# ---- choosing statements ------------------------------------------------------------------------------
def parse_cell(source: str) -> ast.Module:
    """The cell as Python; IPython syntax (``%magic``, ``!cmd``) is turned into calls first if needed."""
    try:
        return ast.parse(source)
    except SyntaxError:
        from IPython.core.inputtransformer2 import TransformerManager
        return ast.parse(TransformerManager().transform_cell(source))


def literal_target(node):
    """A plain name -> "name"; a tuple/list of plain names -> [...]; anything else (attributes,
    subscripts, starred) -> None."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, (ast.Tuple, ast.List)):
        parts = [literal_target(e) for e in node.elts]
        return None if any(p is None for p in parts) else parts
    return None


def target_names(target) -> list[str]:
    return [target] if isinstance(target, str) else [n for t in target for n in target_names(t)]


def is_literal(node) -> bool:
    try:
        ast.literal_eval(node)
        return True
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False


def statement_source(source: str, node: ast.stmt) -> tuple[str, int]:
    """Exact source text of one top-level statement (decorators included) and its first line number."""
    first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
    lines = source.splitlines(keepends=True)
    segment = ast.get_source_segment(source, node) or ""
    if first < node.lineno:
        segment = "".join(lines[first - 1:node.lineno - 1]) + lines[node.lineno - 1][:node.col_offset] + segment
    return segment, first


def choose_statements(source: str, *, student: bool) -> tuple[list[dict], list[str]]:
    """The statements of one cell that the checker runs, and notes on those it ignores.

    Kept: def, class, import/from-import, and assignments of literals to plain names (bound in the child
    with ``ast.literal_eval``). Instructor cells keep the same kinds. Student imports from course.checks
    or autograder are ignored.
    """
    try:
        tree = parse_cell(source)
    except (SyntaxError, ValueError) as error:
        return [], [f"the cell does not parse ({error.msg if isinstance(error, SyntaxError) else error}); nothing in it counts"]
    chosen, notes = [], []
    for node in tree.body:
        line = node.lineno
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            text, first = statement_source(source, node)
            chosen.append({"kind": "code", "source": text, "line": first, "names": [node.name]})
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            if isinstance(node, ast.ImportFrom) and node.level:
                notes.append(f"line {line}: relative import ignored")
                continue
            if student and any(m == p or m.startswith(p + ".") for m in modules for p in FORBIDDEN_IMPORT_PREFIXES):
                notes.append(f"line {line}: imports from {modules[0]} are not taken from answer cells")
                continue
            star = any(a.name == "*" for a in node.names)
            names = [] if star else [(a.asname or a.name.split(".")[0]) for a in node.names]
            text, first = statement_source(source, node)
            chosen.append({"kind": "code", "source": text, "line": first, "names": names, "star": star,
                           "module": modules[0]})
        elif isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None and is_literal(node.value):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            parsed = [literal_target(t) for t in targets]
            if any(p is None for p in parsed) or any(n.startswith("__") for p in parsed for n in target_names(p)):
                notes.append(f"line {line}: `{first_line(source, node)}` ignored (only plain names take literals)")
                continue
            value = ast.get_source_segment(source, node.value) or ast.unparse(node.value)
            for target in parsed:
                chosen.append({"kind": "literal", "target": target, "value": value, "line": line,
                               "names": target_names(target)})
        elif isinstance(node, ast.Pass) or (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)):
            continue
        else:
            notes.append(f"line {line}: `{first_line(source, node)}` ignored (only def, class, import and "
                         f"literal assignments count)")
    return chosen, notes


def first_line(source: str, node: ast.stmt) -> str:
    text = (ast.get_source_segment(source, node) or "").strip().splitlines()
    return (text[0][:70] + ("..." if len(text[0]) > 70 or len(text) > 1 else "")) if text else "?"


def imported_modules(source: str) -> list[str]:
    """Absolute module names imported anywhere in ``source`` (for preloading)."""
    try:
        tree = parse_cell(source)
    except (SyntaxError, ValueError):
        return []
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.append(node.module)
            names += [f"{node.module}.{a.name}" for a in node.names if a.name != "*" and node.module.startswith("course")]
    return names


# ---- the job for the child ----------------------------------------------------------------------------
class NotebookError(Exception):
    """A notebook could not be read; the message says why."""


def read_notebook(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise NotebookError(f"{Path(path).name} is not a readable notebook: {error}") from None
    if not isinstance(data, dict) or not isinstance(data.get("cells"), list):
        raise NotebookError(f"{Path(path).name} is not a notebook (no list of cells)")
    return data


def build_job(source_nb: dict, submitted_nb: dict | None) -> dict:
    """Everything the child needs, chosen here so that the child never reads the course's files."""
    source_cells = code_cells(source_nb)
    answer_ids = [nbgrader_meta(c)["grade_id"] for c in source_cells if is_answer_cell(c)]
    instructor_ids = {nbgrader_meta(c).get("grade_id") for c in source_nb.get("cells", []) if isinstance(c, dict)} - {None}
    program, tests, preload = [], [], ["numpy"]
    # names the answer cells define: an instructor cell never supplies them (a demo cell defining
    # `freeze_all` must not stand in for a student's missing or wrong one)
    answer_names = {name for c in source_cells if is_answer_cell(c)
                    for statement in choose_statements(cell_source(c), student=False)[0] for name in statement["names"]}
    instructor_sources = set()
    answers_since_last_test = []
    for cell in source_cells:
        text = cell_source(cell)
        if is_answer_cell(cell):
            answers_since_last_test.append(nbgrader_meta(cell)["grade_id"])
        if is_test_cell(cell):
            tests.append({"grade_id": nbgrader_meta(cell)["grade_id"], "source": text,
                          "answer_cells": answers_since_last_test})
            answers_since_last_test = []
            preload += imported_modules(text)
        elif not is_answer_cell(cell):
            instructor_sources.add(text.strip())
            statements, _ = choose_statements(text, student=False)
            statements = [st for st in statements if not set(st["names"]) & answer_names]
            program.append({"owner": "instructor", "statements": statements})
            preload += [s["module"] for s in statements if s.get("module")]
            preload += [m for s in statements if s.get("module") for m in imported_modules(s["source"])]
    # the student's cells, in the submission's order: answer cells by grade id, and cells the student added
    for number, cell in enumerate(code_cells(submitted_nb) if submitted_nb else []):
        grade_id = nbgrader_meta(cell).get("grade_id")
        text = cell_source(cell)
        if grade_id in answer_ids:
            name = grade_id
        elif grade_id in instructor_ids or text.strip() in instructor_sources or not text.strip():
            continue
        else:
            name = f"added cell {number + 1}"
        statements, notes = choose_statements(text, student=True)
        program.append({"owner": "student", "cell": name, "statements": statements, "ignored": notes})
    seen, ordered = set(), []
    for module in preload:
        if module and module not in seen and not module.startswith("."):
            seen.add(module)
            ordered.append(module)
    return {"program": program, "tests": tests, "preload": ordered}


def preload_for(source_notebooks: list[Path]) -> list[str]:
    """The modules a checker server should import once for these instructor notebooks (what every check
    of them imports before any student code)."""
    modules = []
    for path in source_notebooks:
        modules += [m for m in build_job(read_notebook(Path(path)), None)["preload"] if m not in modules]
    return modules


# ---- running the child ----------------------------------------------------------------------------------
def sandbox_wrapper():
    """``(wrap, description)``: autograder.sandbox.wrap when the pipeline provides it, else (None, why not)."""
    try:
        from autograder import sandbox
    except ImportError:
        return None, "none (autograder.sandbox not available): the checker ran as the grading user"
    wrap = getattr(sandbox, "wrap", None)
    if not callable(wrap):
        return None, "none (autograder.sandbox has no wrap()): the checker ran as the grading user"
    summary = getattr(sandbox, "summary", None)
    return wrap, (summary() if callable(summary) else "autograder.sandbox.wrap")


@dataclass
class Run:
    """What one child process reported."""
    verdicts: dict = field(default_factory=dict)       # test index -> (passed, message, output)
    loading: str | None = None                          # answer cell being loaded
    running: int | None = None                          # test index being run
    ready: bool = False
    done: bool = False
    fatal: str | None = None
    ended: str | None = None                            # why the child stopped, when it did not finish
    setup_notes: str = ""


def describe_exit(code: int | None) -> str:
    if code is None:
        return "was killed"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code} (sys.exit/os._exit or a crash in the code under test)"


def run_child(job: dict, indices: list[int], *, cell_timeout: float, deadline: float, wrap, workdir: Path,
              server: str | None = None) -> Run:
    """Start one child for the test cells ``indices`` and collect its verdicts until it ends.

    With ``server`` (a checker server's socket) and a sandbox, the child is forked by that server (its
    imports already done); otherwise it is a fresh ``python -I -m autograder.checker_child``, through
    ``wrap`` when there is one. Either way it is confined the same way and speaks the same protocol.
    """
    nonce = secrets.token_hex(16)
    read_fd, write_fd = os.pipe()
    argv = [sys.executable, "-I", "-m", "autograder.checker_child"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON") and k != checker_server.SERVER_VARIABLE}
    env.update(NBGRADER_EXECUTION="autograde", MPLBACKEND="Agg", TF_CPP_MIN_LOG_LEVEL="2")
    spec = None
    if wrap is not None:
        argv = wrap(argv, workdir=workdir)
        if server is not None and checker_server.supported():
            from autograder import sandbox
            spec = sandbox.make_spec(workdir=workdir)
    payload = json.dumps({**job, "run": indices, "nonce": nonce, "verdict_fd": write_fd,
                          "cell_timeout": cell_timeout}).encode()
    run = Run()
    child = None
    if spec is not None:
        try:
            child = checker_server.launch(server, payload, verdict_fd=write_fd, env=env, sandbox_spec=spec)
        except OSError as error:  # e.g. the server died: this check still runs, the slow way
            print(f"checker: {error}; starting a fresh interpreter instead", file=sys.stderr, flush=True)
    if child is None:
        try:
            child = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     pass_fds=(write_fd,), cwd=workdir, env=env, start_new_session=True)
        except OSError as error:
            os.close(read_fd)
            os.close(write_fd)
            run.ended = f"could not be started: {error}"
            return run
    os.close(write_fd)
    stderr_tail = bytearray()

    def drain_stderr():
        for chunk in iter(lambda: child.stderr.read1(65536), b""):
            stderr_tail.extend(chunk)
            del stderr_tail[:-STDERR_TAIL]

    def feed_stdin():
        if child.stdin is None:  # a forked child got its job from the server's request
            return
        try:
            child.stdin.write(payload)
            child.stdin.close()
        except OSError:
            pass

    helpers = [threading.Thread(target=drain_stderr, daemon=True), threading.Thread(target=feed_stdin, daemon=True)]
    for helper in helpers:
        helper.start()
    buffer = b""
    phase_started = time.monotonic()
    killed_for = None
    try:
        while True:
            now = time.monotonic()
            limit = deadline
            if run.running is not None or run.loading is not None:
                limit = min(limit, phase_started + cell_timeout + KILL_GRACE)
            if now >= limit:
                killed_for = ("the submission's time limit ran out" if limit == deadline
                              else f"did not finish within {cell_timeout:g} s")
                break
            ready, _, _ = select.select([read_fd], [], [], min(1.0, limit - now))
            if not ready:
                continue
            chunk = os.read(read_fd, 65536)
            if not chunk:
                break
            buffer += chunk
            if len(buffer) > 1_000_000:  # nobody honest writes this much to the verdict pipe
                killed_for = "flooded the verdict channel"
                break
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                event = parse_event(line, nonce)
                if event is None:
                    continue
                kind = event.get("event")
                phase_started = time.monotonic()
                if kind == "loading":
                    run.loading = str(event.get("cell"))
                elif kind == "loaded":
                    run.loading = None
                elif kind == "ready":
                    run.loading, run.ready, run.setup_notes = None, True, str(event.get("notes") or "")
                elif kind == "start":
                    index = event.get("index")
                    if run.running is not None or index not in indices or index in run.verdicts:
                        run.fatal = "the checker saw a forged or out-of-order report (tampering)"
                        killed_for = run.fatal
                        break
                    run.running = index
                elif kind == "verdict":
                    index = event.get("index")
                    if index != run.running or not isinstance(event.get("passed"), bool):
                        run.fatal = "the checker saw a forged or out-of-order verdict (tampering)"
                        if run.running is not None:
                            run.verdicts[run.running] = (False, run.fatal)
                        killed_for = run.fatal
                        break
                    run.verdicts[index] = (event["passed"], str(event.get("message") or ""),
                                           str(event.get("output") or ""))
                    run.running = None
                elif kind == "fatal":
                    run.fatal = str(event.get("message") or "the checker stopped")
                elif kind == "done":
                    run.done = True
            if killed_for:
                break
    finally:
        code = None
        if not run.done and not killed_for:  # it ended by itself (os._exit, a crash): its status says how
            try:
                code = child.wait(timeout=KILL_GRACE)
            except subprocess.TimeoutExpired:
                pass
        if killed_for or not run.done:
            try:
                os.killpg(child.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if code is None:
            try:
                code = child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()
                code = child.wait(timeout=30)
        os.close(read_fd)
        for helper in helpers:
            helper.join(timeout=5)
    if not run.done:
        reason = killed_for or f"the checker process {describe_exit(code)}"
        tail = bytes(stderr_tail).decode(errors="replace").strip().splitlines()[-3:]
        if not killed_for and tail:  # the child's last words (student code can write there too)
            reason += "; its last output: " + " | ".join(line[:200] for line in tail)
        run.ended = reason
    return run


def parse_event(line: bytes, nonce: str) -> dict | None:
    """The child's event on this line, or None for anything without the nonce or malformed."""
    try:
        event = json.loads(line)
    except (ValueError, RecursionError):
        return None
    if not isinstance(event, dict) or not isinstance(event.get("nonce"), str):
        return None
    if not secrets.compare_digest(event["nonce"].encode("utf-8", "replace"), nonce.encode()):
        return None
    if "index" in event and (type(event["index"]) is not int):
        return None
    return event


def check_submission(source_nb: Path, submitted_nb: Path, *, timeout: float = 300,
                     cell_timeout: float | None = None, server: str | None = None) -> dict[str, dict]:
    """Verdicts ``{grade_id: {"passed", "message", "sandbox"}}`` for every graded test cell of ``source_nb``.

    ``timeout`` bounds the whole submission (seconds, child start-up included); ``cell_timeout`` each test
    cell (default: ``CELL_TIMEOUT``, never more than ``timeout``). A submission that is not a readable
    notebook fails every cell with the reason. Raises NotebookError only if the SOURCE cannot be read.
    ``server``: the socket of a running ``autograder.checker_server`` (default: $FTLAB_CHECKER_SERVER, which
    the grading pipeline sets); without one, each check starts a fresh interpreter.
    """
    server = server or os.environ.get(checker_server.SERVER_VARIABLE) or None
    source = read_notebook(Path(source_nb))
    ids = graded_test_ids(source)
    wrap, sandbox = sandbox_wrapper()

    def verdict(passed: bool, message: str, output: str = "") -> dict:
        return {"passed": passed, "message": message, "output": output, "sandbox": sandbox}

    try:
        submitted = read_notebook(Path(submitted_nb))
    except NotebookError as error:
        return {gid: verdict(False, str(error)) for gid in ids}
    job = build_job(source, submitted)
    tests = job["tests"]
    results: dict[int, tuple] = {}  # (passed, message) or (passed, message, what the cell printed)
    for index, test in enumerate(tests):
        if "### AUTOTEST" in test["source"] or "### HASHED AUTOTEST" in test["source"]:
            results[index] = (False, "this test cell uses nbgrader AUTOTEST, which the checker does not run")
    cell_limit = min(float(cell_timeout or CELL_TIMEOUT), float(timeout))
    deadline = time.monotonic() + float(timeout)
    workdir = Path(tempfile.mkdtemp(prefix="ftlab-check-"))
    job["student_tag"] = "student-" + secrets.token_hex(8)
    try:
        launches = 0
        while True:
            pending = [i for i in range(len(tests)) if i not in results]
            if not pending:
                break
            if time.monotonic() >= deadline or launches > MAX_RELAUNCHES:
                why = ("the submission's time limit ran out before this test cell ran" if time.monotonic() >= deadline
                       else "not run: the checker process died too many times")
                results.update({i: (False, why) for i in pending})
                break
            launches += 1
            run = run_child(job, pending, cell_timeout=cell_limit, deadline=deadline, wrap=wrap, workdir=workdir,
                            server=server)
            results.update(run.verdicts)
            if run.done:
                continue
            reason = run.fatal or run.ended or "the checker process stopped"
            if run.running is not None and run.running not in results:
                results[run.running] = (False, f"this test cell did not complete: {reason}")
                continue  # relaunch for the cells after it
            if run.ready and run.verdicts:
                continue  # it stopped between cells (e.g. after a cell whose code started a thread): go on
            if run.loading is not None:
                reason = f"the checker stopped while loading answer cell {run.loading}: {reason}"
            elif not run.ready:
                reason = f"the checker could not start: {reason}"
            results.update({i: (False, reason) for i in pending if i not in results})
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    by_id = {}
    for index, test in enumerate(tests):
        by_id[test["grade_id"]] = verdict(*results[index])
    for gid in ids:  # graded test cells that are not code cells cannot pass automatically
        by_id.setdefault(gid, verdict(False, "not a code cell: graded by hand"))
    return {gid: by_id[gid] for gid in ids}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m autograder.checker", description=__doc__.splitlines()[0])
    parser.add_argument("source_nb", type=Path, help="the instructor's notebook (source/<assignment>/...)")
    parser.add_argument("submitted_nb", type=Path, help="a student's submitted notebook")
    parser.add_argument("--timeout", type=float, default=300, help="seconds for the whole submission")
    parser.add_argument("--cell-timeout", type=float, default=None, help="seconds per test cell")
    args = parser.parse_args(argv)
    try:
        verdicts = check_submission(args.source_nb, args.submitted_nb, timeout=args.timeout,
                                    cell_timeout=args.cell_timeout)
    except NotebookError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(verdicts, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
