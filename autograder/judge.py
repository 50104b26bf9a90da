"""The judge: runs the instructor's test cells against a submission without ever loading the student's code.

    verdicts = check_submission(Path("source/quiz/quiz.ipynb"), Path("submitted/alice/quiz/quiz.ipynb"))
    verdicts["correct_q1"]  -> {"passed": False, "message": "...", "output": "..."}

    python -m autograder.judge SOURCE_NB SUBMITTED_NB        # the same, printed as JSON

One verdict for every graded test cell of the SOURCE notebook (hidden tests included), whatever the
submission did to its own copies of the test cells: they are never run.

How a verdict is reached
------------------------
The judge reads both notebooks and plans the work (``autograder.cells.plan_submission``). It executes the
instructor's import, ``def`` and literal statements itself, and binds each name the student's cells define:

* a literal (``answer_q1 = "B"``) to its value, read with ``ast.literal_eval`` (data, no code runs);
* a function (``def freeze_all``, or a name it imports) to a ``RunnerFunction``: calling it sends the call's arguments as plain
  data to a **runner** (``autograder.runner``), a new sandboxed process that loads the student's
  definitions, calls the function and sends back, as plain data, what it returned, raised and printed
  and what it changed in its arguments (``course.checks.wire``). The judge rebuilds those objects with
  the framework's own classes and the test cell goes on with them.

Then it runs each test cell with those bindings and records pass (no exception) or fail (the exception's
message), and what the cell printed (worked solutions, the student's own prints) for the feedback. The
test cells, the quiz's key and the grading process's environment never leave this process; the student's
code never enters it. A runner that crashes, hangs, floods its answer or sends data the parser refuses
fails the check that called it, with the reason.

Where it runs: forked by the fork server (``autograder.server``, frameworks imported once), or as a fresh
interpreter (``python -I -m autograder.judge``) where there is no server. Either way it is started by the
per-submission grading process (``autograder.grade_one``) through ``check_submission``.
"""
from __future__ import annotations

import argparse
import ast
import builtins
import contextlib
import io
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from autograder import cells, runner, sandbox, server as fork_server

CELL_TIMEOUT = 180.0        # seconds per runner call when the caller gives none (nbgrader's Execute.timeout)
MAX_ANSWER = 256 << 20      # bytes a runner may send back
MESSAGE_LIMIT = 3000
OUTPUT_LIMIT = 20_000       # characters of a test cell's printed output kept for the feedback
LITERAL_LIMIT = 100_000     # characters of one literal taken from a student's cell
STDERR_TAIL = 4000
FRESH_START = 120.0         # seconds a runner may take to start (a fresh interpreter imports the frameworks)


# ---- calling a student's function: one runner per call ------------------------------------------------
class Runners:
    """How this submission's runners start: its program, limits, sandbox and fork server."""

    def __init__(self, plan: dict, *, cell_timeout: float, deadline: float, server: str | None,
                 sandbox_settings: dict, env: dict):
        self.program, self.preload = plan["program"], plan["preload"]
        self.cell_timeout, self.deadline, self.server = cell_timeout, deadline, server
        self.sandbox_settings, self.env = sandbox_settings, env
        self.calls = 0

    def call(self, function: str, call: bytes) -> bytes:
        """The answer of one runner for ``function`` on the encoded ``call`` (StudentCodeError if none)."""
        from course.checks.wire import StudentCodeError

        left = self.deadline - time.monotonic()
        if left <= 0:
            raise StudentCodeError(f"{function} was not called: the submission's time limit ran out")
        limit = min(self.cell_timeout, left)
        request = runner.make_request(self.program, function, call, self.preload)
        workdir = Path(tempfile.mkdtemp(prefix="ftlab-run-"))
        self.calls += 1
        try:
            answer, ended = self.start_and_read(request, workdir, limit)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        if ended:
            raise StudentCodeError(f"{function} {ended}")
        return answer

    def start_and_read(self, request: bytes, workdir: Path, limit: float) -> tuple[bytes, str]:
        read_fd, write_fd = os.pipe()
        spec = sandbox.make_spec(workdir=workdir, **self.sandbox_settings)
        child = None
        if self.server and fork_server.supported():
            try:
                child = fork_server.launch_runner(self.server, request, answer_fd=write_fd, env=self.env,
                                                  sandbox_spec=spec)
            except OSError as error:  # e.g. the server died: this call still runs, the slow way
                print(f"judge: {error}; starting a fresh runner instead", file=sys.stderr, flush=True)
        if child is None:
            argv = sandbox.wrap([sys.executable, "-I", "-m", "autograder.runner", str(write_fd)], workdir=workdir,
                                **self.sandbox_settings)
            try:
                child = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.PIPE, pass_fds=(write_fd,), cwd=workdir, env=self.env,
                                         start_new_session=True)
            except OSError as error:
                os.close(read_fd)
                os.close(write_fd)
                return b"", f"could not be run: {error}"
            threading.Thread(target=feed, args=(child.stdin, request), daemon=True).start()
        os.close(write_fd)
        started, ready = time.monotonic(), threading.Event()
        tail = bytearray()
        drain = threading.Thread(target=keep_tail, args=(child.stderr, tail, ready), daemon=True)
        drain.start()

        def deadline() -> float:  # the limit counts from the moment the student's code may run
            return ready.when + limit if ready.is_set() else started + limit + FRESH_START

        answer, problem = read_answer(read_fd, deadline)
        os.close(read_fd)
        code = None
        if problem is None:
            try:
                code = child.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                problem = f"did not finish within {limit:g} s"
        if problem is not None or code is None:
            kill(child)
        if code is None:
            try:
                code = child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                code = None
        drain.join(timeout=5)
        if problem == "timeout":
            return b"", f"did not finish within {limit:g} s (a check calls it with small inputs)"
        if problem:
            return b"", problem
        if not answer:
            last = [line for line in bytes(tail).decode(errors="replace").strip().splitlines()
                    if "ftlab-runner-ready" not in line][-3:]
            why = f"ended without an answer: the process running it {describe_exit(code)}"
            return b"", why + ("; its last output: " + " | ".join(line[:200] for line in last) if last else "")
        return answer, ""


def feed(stdin, data: bytes) -> None:
    try:
        stdin.write(data)
        stdin.close()
    except OSError:
        pass


def keep_tail(stream, tail: bytearray, ready: threading.Event) -> None:
    """Keep the end of a runner's stderr; note when it says it is about to load the student's code."""
    for chunk in iter(lambda: stream.read1(65536), b""):
        if not ready.is_set() and runner.READY in bytes(tail[-len(runner.READY):]) + chunk:
            ready.when = time.monotonic()
            ready.set()
        tail.extend(chunk)
        del tail[:-STDERR_TAIL]


def read_answer(fd: int, deadline) -> tuple[bytes, str | None]:
    parts, size = [], 0
    while True:
        left = deadline() - time.monotonic()
        if left <= 0:
            return b"", "timeout"
        ready, _, _ = select.select([fd], [], [], min(left, 1.0))
        if not ready:
            continue
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return b"".join(parts), None
        size += len(chunk)
        if size > MAX_ANSWER:
            return b"", f"sent back more than {MAX_ANSWER >> 20} MB"
        parts.append(chunk)


def kill(child) -> None:
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def describe_exit(code: int | None) -> str:
    if code is None:
        return "was killed"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code} (sys.exit/os._exit or a crash in the code under test)"


def runner_function(name: str, runners: Runners):
    from course.checks.wire import Remote

    class RunnerFunction(Remote):
        """The student's function ``name``: each call runs in a new sandboxed runner."""

        def run(self, request: bytes) -> bytes:
            return runners.call(name, request)

        def __repr__(self):
            return f"<your function {name}>"

    function = RunnerFunction()
    function.name = name
    return function


# ---- the judge's view of the student's work -----------------------------------------------------------
def student_bindings(plan: dict, runners: Runners, reserved: set) -> tuple[dict, dict]:
    """(name -> value or RunnerFunction, cell -> notes) for the names the student's cells define."""
    bindings, notes = {}, {}
    for block in plan["program"]:
        if block["owner"] != "student":
            continue
        cell_notes = notes.setdefault(block["cell"], list(block.get("ignored") or []))
        for statement in block["statements"]:
            names = statement["names"]
            if statement["kind"] == "literal":
                try:
                    if len(statement["value"]) > LITERAL_LIMIT:
                        raise ValueError(f"longer than {LITERAL_LIMIT} characters")
                    scratch = {}
                    runner.bind(scratch, statement["target"], ast.literal_eval(statement["value"]))
                    bindings.update(scratch)
                except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as error:
                    cell_notes.append(f"line {statement['line']}: the value could not be read ({error})"[:200])
                    for name in names:
                        bindings.pop(name, None)
            else:  # def, class, import: the object lives in the runner; calling it runs there
                for name in names:
                    bindings[name] = runner_function(name, runners)
    exported = {name: value for name, value in bindings.items()
                if not name.startswith("__") and name not in reserved}
    return exported, notes


def instructor_namespace(plan: dict) -> tuple[dict, list[str]]:
    """The instructor's imports, definitions and literals (trusted code), run here."""
    namespace, problems = {"__name__": "__main__", "__builtins__": builtins}, []
    for block in plan["program"]:
        if block["owner"] == "instructor":
            problems += runner.load_program([block], namespace)
    return namespace, problems


def describe(error: BaseException) -> str:
    """An AssertionError's text (the check's message), else ``Type: text``."""
    text = str(error)
    if isinstance(error, AssertionError):
        return text or "AssertionError (the test cell's assert failed)"
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def judge(source_nb: Path, submitted_nb: Path, *, timeout: float = 300, cell_timeout: float | None = None,
          server: str | None = None, sandbox_settings: dict | None = None, env: dict | None = None) -> dict:
    """Verdicts ``{grade_id: {"passed", "message", "output"}}``, computed in this process (the judge)."""
    source = cells.read_notebook(Path(source_nb))
    ids = cells.graded_test_ids(source)

    def verdict(passed: bool, message: str, output: str = "", seconds: float = 0.0, calls: int = 0) -> dict:
        return {"passed": passed, "message": message[:MESSAGE_LIMIT + 1600], "output": output,
                "seconds": round(seconds, 3), "calls": calls}

    try:
        submitted = cells.read_notebook(Path(submitted_nb))
    except cells.NotebookError as error:
        return {gid: verdict(False, str(error)) for gid in ids}
    plan = cells.plan_submission(source, submitted)
    for module in cells.import_order(plan["preload"]):
        try:
            __import__(module)
        except Exception:  # noqa: BLE001 - a test cell that needs it reports the error
            pass
    runners = Runners(plan, cell_timeout=float(cell_timeout or CELL_TIMEOUT), server=server,
                      deadline=time.monotonic() + float(timeout), sandbox_settings=sandbox_settings or {},
                      env=env if env is not None else sandbox.safe_environment(os.environ))
    instructor, _ = instructor_namespace(plan)  # its problems concern the instructor only (see below)
    reserved = set(instructor) | set(dir(builtins))
    exported, notes = student_bindings(plan, runners, reserved)
    results = {}
    for test in plan["tests"]:
        if "### AUTOTEST" in test["source"] or "### HASHED AUTOTEST" in test["source"]:
            results[test["grade_id"]] = verdict(False, "this test cell uses nbgrader AUTOTEST, which the judge does not run")
            continue
        namespace = {**exported, **instructor}
        started, calls = time.monotonic(), runners.calls
        printed = io.StringIO()
        passed, message = True, ""
        try:
            code = compile(test["source"], f"<test cell {test['grade_id']}>", "exec", dont_inherit=True)
            with contextlib.redirect_stdout(printed):
                exec(code, namespace)  # noqa: S102 - the instructor's test cell
        except Exception as error:  # noqa: BLE001 - a failing check
            passed, message = False, describe(error)[:MESSAGE_LIMIT]
        if not passed:
            # notes on the student's own cells only: an instructor helper that cannot be defined outside the
            # kernel (e.g. a default argument computed by a cell the judge does not run) is not the student's
            # concern; a test that needs it fails for the reference too, which the course's tests catch
            lines = [f"[{c}] {n}" for c in test.get("answer_cells") or list(notes) for n in notes.get(c, [])]
            if lines:
                message += "\n(grader notes on your cells: " + "; ".join(lines)[:1500] + ")"
        text = printed.getvalue()
        if len(text) > OUTPUT_LIMIT:
            text = text[:OUTPUT_LIMIT] + "\n... (output cut)\n"
        results[test["grade_id"]] = verdict(passed, message, text, time.monotonic() - started, runners.calls - calls)
    for gid in ids:  # graded test cells that are not code cells cannot pass automatically
        results.setdefault(gid, verdict(False, "not a code cell: graded by hand"))
    return {gid: results[gid] for gid in ids}


def judge_job(job: dict) -> dict:
    """Entry point of a judge forked by the fork server: ``job`` from ``check_submission``."""
    return judge(Path(job["source"]), Path(job["submitted"]), timeout=job["timeout"], cell_timeout=job["cell_timeout"],
                 server=job.get("server"), sandbox_settings=job.get("sandbox") or {}, env=job.get("env"))


def check_submission(source_nb: Path, submitted_nb: Path, *, timeout: float = 300, cell_timeout: float | None = None,
                     server: str | None = None, sandbox_settings: dict | None = None) -> dict:
    """Start a judge process for one notebook and return its verdicts (see the module docstring).

    ``server``: a running fork server's socket (default: $FTLAB_FORK_SERVER, set by the grading pipeline);
    without one the judge is a fresh interpreter. ``sandbox_settings``: uid, hide, memory_bytes for the
    runners (``sandbox.make_spec``). Raises cells.NotebookError only if the SOURCE cannot be read.
    """
    cells.read_notebook(Path(source_nb))
    server = server or os.environ.get(fork_server.SERVER_VARIABLE) or None
    job = {"source": str(Path(source_nb).resolve()), "submitted": str(Path(submitted_nb).resolve()),
           "timeout": float(timeout), "cell_timeout": float(cell_timeout or CELL_TIMEOUT), "server": server,
           "sandbox": sandbox_settings or {}, "env": sandbox.safe_environment(os.environ)}
    if server and fork_server.supported():
        try:
            return fork_server.run_judge(server, job, timeout=float(timeout) + 60)
        except OSError as error:
            print(f"judge: {error}; starting a fresh judge instead", file=sys.stderr, flush=True)
            job["server"] = None
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON") and k != fork_server.SERVER_VARIABLE}
    done = subprocess.run([sys.executable, "-I", "-m", "autograder.judge", "--job", "-"], input=json.dumps(job),
                          capture_output=True, text=True, env=env, timeout=float(timeout) + 120)
    if done.returncode != 0:
        raise RuntimeError(f"the judge failed: {done.stderr.strip()[-500:]}")
    return json.loads(done.stdout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m autograder.judge", description=__doc__.splitlines()[0])
    parser.add_argument("source_nb", type=Path, nargs="?", help="the instructor's notebook (source/<assignment>/...)")
    parser.add_argument("submitted_nb", type=Path, nargs="?", help="a student's submitted notebook")
    parser.add_argument("--timeout", type=float, default=300, help="seconds for the whole submission")
    parser.add_argument("--cell-timeout", type=float, default=None, help="seconds per call of a student function")
    parser.add_argument("--job", help="'-': read a job from stdin (how check_submission starts a fresh judge)")
    args = parser.parse_args(argv)
    try:
        if args.job == "-":
            verdicts = judge_job(json.loads(sys.stdin.read()))
        elif args.source_nb and args.submitted_nb:
            verdicts = judge(args.source_nb, args.submitted_nb, timeout=args.timeout, cell_timeout=args.cell_timeout)
        else:
            parser.error("give SOURCE_NB and SUBMITTED_NB")
    except cells.NotebookError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(verdicts, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
