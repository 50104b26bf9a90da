"""One command from a folder of submissions to grades and feedback (issue 6), sandboxed (issue 7).

    python -m autograder grade ASSIGNMENT SUBMISSIONS --out OUT [--jobs N]

Process model (README, "How grading works"): the run builds one template course (the instructor's
nbgrader_config.py + source/ASSIGNMENT, ``nbgrader generate_assignment`` -> gradebook.db + release/). Each
submission gets a copy of that course in its own temporary folder (so its own sqlite gradebook: no write
conflicts) and is graded by its own child process (``autograder.grade_one``: nbgrader autograde in a
sandboxed kernel, the judge's verdicts, nbgrader generate_feedback). ``--jobs`` children run at once; the
parent merges their results into OUT/grades.csv, OUT/checks.csv, OUT/feedback/<student>.html and
OUT/run.json. The student's file is only ever read (copied into the job's course). Protected runs also
start one fork server (``autograder.server``) that every judge and runner forks from; each job gets its
share of the cores for framework threads (``thread_settings``).
"""
from __future__ import annotations

import base64
import functools
import importlib.util
import json
import multiprocessing
import secrets
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import closing, suppress
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from autograder import course_db, lateness as late, sandbox, server as fork_server
from autograder.grade_one import PRELOAD, child_main
from autograder.reports import CHECKS_COLUMNS, GRADES_COLUMNS, fmt, write_reports  # noqa: F401 (the CSV schema)
from autograder.submissions import InstructorError, Submission, find_submissions, printable, unpack

REPO = Path(__file__).resolve().parents[1]
SANDBOX_KERNEL = "ftlab-sandbox"
def first_uid() -> int:
    """Job i of this run runs as uid first_uid() + i (kernel and runners alike). A random base per run,
    so that two runs at once (an instructor's and a benchmark) never share a uid: after each job the
    pipeline kills every process of that job's uid."""
    return 200_000 + secrets.randbelow(10**6) * 1000


@dataclass
class Options:
    assignment: str
    submissions: Path
    out: Path
    jobs: int = os.cpu_count() or 1
    course: Path = REPO
    cell_timeout: int | None = None  # None: the course's Execute.timeout
    submission_timeout: int = 1800
    memory_bytes: int = sandbox.DEFAULT_MEMORY
    protected: bool = True  # sandbox + judge; False only for the benchmark's comparison
    keep_temp: bool = False
    first_uid: int = field(default_factory=first_uid)
    # issue 16: grade into the course's own gradebook (autograder/course_db.py); late submissions (lateness.py)
    into_course: bool = False
    force: bool = False  # --into-course: regrade unchanged submissions too
    due: str | None = None  # None: the course gradebook's due date
    extensions: Path | None = None
    cluster: str | None = None  # a dask scheduler's address: grade there (autograder/cluster.py)


@dataclass
class Row:
    student_id: str
    status: str
    score: float | None = None
    reason: str = ""
    checks: list = field(default_factory=list)
    feedback: Path | None = None
    seconds: float = 0.0
    timings: dict = field(default_factory=dict)
    lateness: late.Lateness | None = None  # filled for graded rows (autograder/lateness.py)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- the template course
def expected_notebooks(course: Path, assignment: str) -> list[str]:
    folder = course / "source" / assignment
    known = sorted(p.name for p in (course / "source").iterdir() if p.is_dir()) if (course / "source").is_dir() else []
    if not assignment or "/" in assignment or not folder.is_dir():
        raise InstructorError(f"unknown assignment {assignment!r}: no folder source/{assignment} in {course}"
                              f" (known: {', '.join(known) or 'none'})")
    names = sorted(p.name for p in folder.glob("*.ipynb"))
    if not names:
        raise InstructorError(f"assignment {assignment!r} has no notebook in {folder}")
    return names


THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TF_NUM_INTRAOP_THREADS",
                    "TF_NUM_INTEROP_THREADS")


def thread_settings(jobs: int) -> dict:
    """Each job's share of the cores for torch, TensorFlow and BLAS (unless the instructor set them).

    Left alone, every kernel starts one compute thread per core: with --jobs 2 on 2 cores, 4 PyTorch-lesson
    submissions took 129 s to grade instead of 31 s, the BLAS threads fighting for the cores (README).
    """
    share = str(max(1, (os.cpu_count() or 1) // max(1, jobs)))
    return {name: os.environ.get(name, share) for name in THREAD_VARIABLES}


def nbgrader_env() -> dict:
    bin_dir = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if k != "FTLAB_WARM_COURSE"}  # for the fork server only
    return {**env, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}


def build_template(opts: Options, root: Path) -> tuple[Path, float]:
    """A throw-away course with the instructor's config and this assignment, generated once per run. It is
    built under another name and renamed ``root/template`` when complete (``autograder.warm`` waits for it)."""
    template = root / "template-building"
    template.mkdir()
    shutil.copy(opts.course / "nbgrader_config.py", template / "nbgrader_config.py")
    with open(template / "nbgrader_config.py", "a") as f:  # late penalties: the pipeline's (autograder/lateness.py)
        f.write("\nc.AssignLatePenalties.plugin_class = 'nbgrader.plugins.LateSubmissionPlugin'\n")
    shutil.copytree(opts.course / "source" / opts.assignment, template / "source" / opts.assignment,
                    ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    stamp_gradebook(template / "gradebook.db")
    done = subprocess.run([str(Path(sys.executable).parent / "nbgrader"), "generate_assignment", opts.assignment,
                           "--force", "--log-level=ERROR"], cwd=template, capture_output=True, text=True,
                          env=nbgrader_env())
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise InstructorError(f"nbgrader generate_assignment {opts.assignment} failed: {last}")
    template = template.rename(root / "template")
    return template, max_code_score(template / "release" / opts.assignment)


def alembic_head() -> str | None:
    """The newest revision of nbgrader's gradebook schema, read from its migration scripts (what ``alembic
    heads`` prints), or None when they do not form one chain."""
    spec = importlib.util.find_spec("nbgrader")  # found, not imported: its import costs seconds
    if spec is None or spec.origin is None:
        return None
    revisions, parents = set(), set()
    for script in (Path(spec.origin).parent / "alembic" / "versions").glob("*.py"):
        text = script.read_text()  # `revision = 'abc'`, or with a type annotation: `revision: str = 'abc'`
        found = re.search(r"^revision\s*(?::[^=\n]*)?=\s*['\"](\w+)['\"]", text, re.M)
        parent = re.search(r"^down_revision\s*(?::[^=\n]*)?=\s*['\"](\w+)['\"]", text, re.M)
        if found:
            revisions.add(found.group(1))
        if parent:
            parents.add(parent.group(1))
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None


def stamp_gradebook(db: Path) -> None:
    """Start the template's gradebook with its schema version already stamped. nbgrader stamps a new gradebook
    by running ``alembic heads`` in a subprocess (4-5 s here, once per run); with the table present it creates
    the other tables itself and skips that. Without one clear head, nbgrader does it as usual."""
    head = alembic_head()
    if head is None:
        return
    with closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
        conn.execute("INSERT INTO alembic_version (version_num) VALUES (?)", (head,))


def max_code_score(release: Path) -> float:
    """The assignment's points, as nbgrader's gradebook sums them (``max_code_score``: the points of its graded
    code cells), read from the notebooks nbgrader just generated: importing nbgrader here would cost seconds."""
    from autograder.cells import nbgrader_meta

    total = 0.0
    for path in sorted(release.glob("*.ipynb")):
        for cell in json.loads(path.read_text()).get("cells", []):
            meta = nbgrader_meta(cell)
            if meta.get("grade") and cell.get("cell_type") == "code":
                total += float(meta.get("points", 0) or 0)
    return total


# ----------------------------------------------------------------------------- one job per submission
SOCKET_PATH_BYTES = 107  # the longest path of a Unix socket (sun_path) on Linux


def check_socket_room(root: Path) -> None:
    """The kernels' sockets are made under ``root`` (``c.KernelManager.ip`` below): refuse a run whose
    temporary folder is so deep that they could not be, instead of failing every kernel (ZMQError)."""
    longest = root / "jobs" / "00000" / "runtime" / "kernel-65535"
    if len(str(longest).encode()) > SOCKET_PATH_BYTES:
        raise InstructorError(f"the kernels' socket paths ({longest}) would be longer than the {SOCKET_PATH_BYTES}"
                              " bytes a Unix socket allows: set TMPDIR to a shorter folder")


def sandbox_settings(opts: Options, job: Path, workdir: Path, uid: int, hide: list[Path], groups: list[str]) -> str:
    """Config lines that make nbgrader start the student's kernel through autograder.sandbox."""
    runtime = sandbox.scratch_folder(job / "runtime")  # on tmpfs (/dev/shm); read-only for the kernel once it runs
    # The kernel's own stdout and stderr go to /dev/null, not to this job's log (a host file it could write and
    # read through the inherited descriptors); what its cells print reaches the notebook over its sockets.
    kernel = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    limits = dict(workdir=workdir, memory_bytes=opts.memory_bytes, cpu_seconds=opts.submission_timeout, uid=uid,
                  hide=tuple(hide), keep=(runtime,), cgroups=groups)
    fresh = sandbox.wrap(["/bin/sh", "-c", 'exec "$@" >/dev/null 2>&1', "kernel", *kernel],
                         give=("{connection_file}",), **limits)
    # With the run's fork server, the kernel is forked from it into the same sandbox, its imports done
    # (autograder.server.kernel_client); without one, or if it refuses, the client execs ``fresh``.
    spec = base64.urlsafe_b64encode(json.dumps(sandbox.make_spec(**limits)).encode()).decode()
    argv = [sys.executable, "-I", "-m", "autograder.server", "kernel", spec, "{connection_file}", "--", *fresh]
    if shutil.which("setpriv"):  # the kernel's sandbox dies with its grading process (a killed dask worker's too)
        argv = [shutil.which("setpriv"), "--pdeathsig", "KILL", *argv]
    spec_dir = job / "jupyter" / "kernels" / SANDBOX_KERNEL
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps(
        {"argv": argv, "display_name": "Python 3 (sandboxed)", "language": "python"}, indent=1))
    return (f"\n# --- added by autograder.pipeline for this submission only ---\n"
            f"c.Execute.kernel_name = {SANDBOX_KERNEL!r}\n"
            f"c.Execute.startup_timeout = 300  # a loaded grading machine can take more than the default 60 s\n"
            f"c.KernelManager.transport = 'ipc'  # unix sockets: the sandbox has no network at all\n"
            f"c.KernelManager.ip = {str(runtime / 'kernel')!r}  # absolute: the kernel starts elsewhere\n")


def prepare_job(opts: Options, root: Path, template: Path, sub: Submission, index: int) -> dict:
    job = root / "jobs" / f"{index:05d}"
    course = job / "course"
    shutil.copytree(template, course)
    folder = course / "submitted" / sub.student_id / opts.assignment
    folder.mkdir(parents=True)
    for name, path in sub.notebooks.items():
        shutil.copyfile(path, folder / name)  # the private copy of the bytes read (autograder.submissions)
    settings = ""
    if opts.cell_timeout:
        settings += f"\nc.Execute.timeout = {int(opts.cell_timeout)}\n"
    uid = opts.first_uid + index
    hide = list(dict.fromkeys([root, Path(opts.course).resolve(), opts.submissions, opts.out]))  # --course too
    groups = []  # the submission's memory and pids cgroups, shared by its kernel and runners
    started = time.perf_counter()
    if opts.protected:
        groups = sandbox.submission_group(f"{root.name}-{index:05d}", opts.memory_bytes, sandbox.DEFAULT_PROCESSES)
        workdir = course / "autograded" / sub.student_id / opts.assignment
        settings += sandbox_settings(opts, job, workdir, uid, hide, groups)
    with open(course / "nbgrader_config.py", "a") as f:
        f.write(settings)
    spec = {"course": str(course), "assignment": opts.assignment, "student": sub.student_id,
            "notebooks": sorted(sub.notebooks), "use_judge": opts.protected,
            "judge_timeout": opts.submission_timeout / 2, "cell_timeout": opts.cell_timeout or course_cell_timeout(opts),
            "sandbox": {"uid": uid, "hide": [str(p) for p in hide], "memory_bytes": opts.memory_bytes,
                        "cgroups": groups},
            "template_cache": str(root / "template-cache")}  # compiled feedback templates, shared by the run's jobs
    (job / "job.json").write_text(json.dumps(spec, indent=1))
    return {"dir": job, "uid": uid, "spec": spec, "hide": [str(p) for p in hide], "cgroups": groups,
            "course_copy": time.perf_counter() - started}


def start_fork_server(opts: Options, root: Path, source: Path) -> fork_server.ForkServer | None:
    """One fork server for the run: it imports what the assignment's notebooks (in ``source``) need and
    ipykernel once, and forks each submission's judge, its kernel and every sandboxed runner
    (autograder/server.py). None when it cannot start: judges, runners and kernels then start as fresh
    interpreters (slower, equally safe)."""
    from autograder.cells import preload_for

    if not (opts.protected and fork_server.supported()):
        return None
    folder = root / "fork-server"
    folder.mkdir(mode=0o700)
    preload = preload_for(sorted(source.glob("*.ipynb"))) + fork_server.KERNEL_PRELOAD
    try:
        return fork_server.ForkServer.start(preload, folder, env={**thread_settings(opts.jobs), **grading_settings()})
    except (OSError, RuntimeError) as error:
        log(f"the fork server did not start ({str(error)[:200]}): judges, runners and kernels start as fresh "
            "interpreters")
        return None


def grading_settings() -> dict:
    """Settings every process of a run shares: the course weights unless the instructor chose others (the
    judge and the sandboxed runners must load the same ones, and the sandbox hides the ImageNet caches)."""
    return {"FTLAB_WEIGHTS": os.environ.get("FTLAB_WEIGHTS", "course")}


def course_cell_timeout(opts: Options) -> int:
    """The course's ``c.Execute.timeout`` (nbgrader_config.py), the limit of every cell and call. Read once per
    course folder: the config imports nbgrader (about 4 s), so a run reads it in the background while the
    template is built (``grade``), and a dask worker while it sets up, not in a submission's preparation."""
    return _config_cell_timeout(str(Path(opts.course).resolve()))


@functools.lru_cache(maxsize=None)
def _config_cell_timeout(course: str) -> int:
    from traitlets.config.loader import PyFileConfigLoader

    try:
        config = PyFileConfigLoader("nbgrader_config.py", path=course).load_config()
        return int(config.Execute.timeout)
    except Exception:  # noqa: BLE001 - no readable setting: nbgrader's own default
        return 30


_PROCESSES = []


def grading_processes():
    """A fork server that has imported nbgrader once: each submission still gets its own fresh process
    (forked from it), without paying nbgrader's import time (seconds) again."""
    if not _PROCESSES:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(PRELOAD + ["autograder.warm"])
        _PROCESSES.append(context)
    return _PROCESSES[0]


def warm_grading_processes(template: Path) -> threading.Thread:
    """Start the grading processes' fork server now, in the background, warmed up on ``template``
    (``autograder.warm``: nbgrader's first-use costs paid once, not by every submission)."""
    from autograder.warm import PARENT_VARIABLE, WARM_VARIABLE

    os.environ[WARM_VARIABLE] = str(template)  # read (and removed) by the fork server when it starts
    os.environ[PARENT_VARIABLE] = str(os.getpid())

    def start() -> None:
        process = grading_processes().Process(target=time.sleep, args=(0,))
        process.start()
        os.environ.pop(WARM_VARIABLE, None)
        os.environ.pop(PARENT_VARIABLE, None)
        process.join()

    thread = threading.Thread(target=start, daemon=True)
    thread.start()
    return thread


def release_job(job: dict) -> None:
    """Kill what is left of a job's submission and remove its cgroups and runtime folder; ``job["limits"]``
    says which bounds it reached (a released job has that key)."""
    job["limits"] = sandbox.remove_group(job["cgroups"])
    sandbox.remove_scratch(job["dir"] / "runtime")


def end_grading_process(proc) -> None:
    """Kill a grading process and all it started: it made itself a session leader, so its group goes."""
    with suppress(OSError):
        os.killpg(proc.pid, signal.SIGKILL)


def run_job(opts: Options, job: dict, sub: Submission) -> Row:
    env = {**nbgrader_env(), **thread_settings(opts.jobs), **grading_settings(), "JUPYTER_PATH": str(job["dir"] / "jupyter"),
           "JUPYTER_RUNTIME_DIR": str(job["dir"] / "runtime"), "PYTHONDONTWRITEBYTECODE": "1"}
    if opts.protected:  # jupyter_client writes the kernel's connection file (and ipc sockets) in TMPDIR
        env["TMPDIR"] = str(job["dir"] / "runtime")
        if job.get("fork_server"):
            env[fork_server.SERVER_VARIABLE] = job["fork_server"]
    start = time.monotonic()
    proc = grading_processes().Process(target=child_main, args=(
        str(job["dir"] / "job.json"), env, job["spec"]["course"], str(job["dir"] / "worker.log")))
    proc.start()
    job["process"] = proc  # grade_here ends it at once when the run is interrupted
    try:
        proc.join(timeout=opts.submission_timeout)
        timed_out = proc.is_alive()
        if timed_out:
            end_grading_process(proc)
            proc.join()
    finally:
        if opts.protected and sandbox.protections()["separate_user"]["active"]:
            sandbox.kill_user_processes(job["uid"])
        release_job(job)
    seconds = time.monotonic() - start
    if timed_out:
        return Row(sub.student_id, "failed", reason=f"grading took longer than {opts.submission_timeout} s"
                   " (per-submission limit)", seconds=seconds)
    result_file = job["dir"] / "result.json"
    if not result_file.exists():
        return Row(sub.student_id, "failed", reason=f"grading process ended with code {proc.exitcode}",
                   seconds=seconds)
    result = json.loads(result_file.read_text())
    timings = {**(result.get("timings") or {}), "course_copy": round(job.get("course_copy", 0.0), 3)}
    row = Row(sub.student_id, result["status"], reason=result["reason"], checks=result["checks"], seconds=seconds,
              timings=timings)
    if row.status == "graded":
        row.score = sum(c["score"] for c in row.checks)
        feedback = sorted((Path(job["spec"]["course"]) / "feedback" / sub.student_id / opts.assignment).glob("*.html"))
        row.feedback = feedback[0] if len(feedback) == 1 else None
    return row


# ----------------------------------------------------------------------------- grading the jobs
STEP_NAMES = {  # run.json: what each key of mean_step_seconds measures (seconds per graded submission)
    "course_copy": "copying the template course (config, source, release, gradebook) for the submission",
    "imports": "the grading process's start until its first step (nbgrader is imported by the fork server)",
    "restore": "checking and restoring the submission's nbgrader metadata and test cells",
    "autograde": "nbgrader autograde in all: kernel start, cells, and nbgrader's own steps",
    "kernel_start": "starting the sandboxed kernel, forked by the fork server (part of autograde)",
    "cells": "running the notebook's cells in the kernel, test cells set aside (part of autograde)",
    "gradebook": "nbgrader's steps around the run: cells restored, gradebook rows (autograde minus the two above)",
    "judge": "the judge's own time: it runs alongside the kernel",
    "judge_wait": "the wait for the judge's verdicts after the kernel finished, and writing them",
    "feedback": "rendering the feedback page",
}


class Progress:
    """The progress line with an ETA, for local jobs and cluster workers alike; records each row."""

    def __init__(self, total: int, done: int, max_score: float, rows: dict):
        self.total, self.done, self.max_score, self.rows = total, done, max_score, rows
        self.first, self.start, self.lock = done, time.monotonic(), threading.Lock()

    def record(self, sub: Submission, row: Row, where: str = "") -> None:
        if row.status == "graded" and sub.notes:
            row.reason = "; ".join(sub.notes + ([row.reason] if row.reason else []))
        with self.lock:
            self.rows[row.student_id] = row
            self.done += 1
            elapsed = time.monotonic() - self.start
            eta = elapsed / max(self.done - self.first, 1) * (self.total - self.done)
            log(f"[{self.done}/{self.total}] {row.student_id}: {row.status} {fmt(row.score) or '-'}/"
                f"{fmt(self.max_score)} ({row.seconds:.1f} s{where})  elapsed {elapsed:.0f} s, ETA {eta:.0f} s")


def grade_here(opts: Options, root: Path, template: Path, gradable: list, progress: Progress,
               server: fork_server.ForkServer | None) -> dict:
    """Grade on this machine: ``opts.jobs`` grading processes at once, with the run's fork server."""
    todo = [(sub, prepare_job(opts, root, template, sub, i)) for i, sub in gradable]
    if server is not None:
        for _, job in todo:
            job["fork_server"] = str(server.socket_path)
    try:
        with ThreadPoolExecutor(max_workers=max(1, opts.jobs)) as pool:
            futures = {pool.submit(run_job, opts, job, sub): sub for sub, job in todo}
            try:
                for future in as_completed(futures):
                    progress.record(futures[future], future.result())
            except BaseException:  # Ctrl-C or a bug: the jobs not started yet are not started, the running end now
                pool.shutdown(wait=False, cancel_futures=True)
                while not all(future.done() for future in futures):
                    for _, job in todo:
                        if job.get("process") is not None and job["process"].is_alive():
                            end_grading_process(job["process"])
                    time.sleep(0.2)
                raise
    finally:  # run_job releases the jobs it ran; these are the others (all were prepared before the first ran)
        for _, job in todo:
            if "limits" not in job:
                release_job(job)
    return {"judge_processes": "forked by the fork server" if server else "fresh interpreters", "todo": todo}


# ----------------------------------------------------------------------------- outputs
def submission_limits(opts: Options, todo: list) -> dict | None:
    """The bounds each submission's sandboxed processes shared, and whose reached them (cgroups)."""
    if not opts.protected:
        return None
    reached = {kind: sorted(sub.student_id for sub, job in todo if (job.get("limits") or {}).get(f"{kind}_limit_reached"))
               for kind in ("memory", "process")}
    return {"memory_bytes": opts.memory_bytes, "processes": sandbox.DEFAULT_PROCESSES,
            "held": {kind: bool(sandbox.cgroup_support()[controller][0]) and all(job["cgroups"] for _, job in todo)
                     for kind, controller in (("memory", "memory"), ("processes", "pids"))},
            "memory_limit_reached": reached["memory"], "process_limit_reached": reached["process"]}


def mean_steps(timings: list[dict]) -> dict:
    """Mean seconds per grading step over the graded submissions (imports, autograde, judge, feedback)."""
    names = sorted({k for t in timings for k, v in t.items() if v is not None})
    return {k: round(sum(t.get(k) or 0 for t in timings) / len(timings), 2) for k in names} if timings else {}


def write_outputs(opts: Options, rows: list[Row], max_score: float, run_info: dict) -> None:
    write_reports(opts.out, opts.assignment, rows, max_score)  # grades.csv, checks.csv, feedback/ (reports.py)
    (opts.out / "run.json").write_text(json.dumps(run_info, indent=1) + "\n")


# ----------------------------------------------------------------------------- the whole run
def check_paths(opts: Options) -> None:
    if not opts.submissions.exists():
        raise InstructorError(f"submissions not found: {opts.submissions}")
    if opts.submissions.is_file() and opts.submissions.suffix.lower() != ".zip":
        raise InstructorError(f"submissions must be a folder or a .zip: {opts.submissions}")
    if not os.access(opts.submissions, os.R_OK | (os.X_OK if opts.submissions.is_dir() else 0)):
        raise InstructorError(f"cannot read submissions: {opts.submissions}")
    if opts.out.resolve() == opts.submissions.resolve() or opts.submissions.resolve() in opts.out.resolve().parents:
        raise InstructorError("--out must not be inside the submissions folder (it is never written to)")


def grade(opts: Options) -> int:
    opts.submissions, opts.out = Path(opts.submissions).resolve(), Path(opts.out).resolve()
    notebooks = expected_notebooks(opts.course, opts.assignment)
    check_paths(opts)
    root = sandbox.private_folder("ftlab-grade-")
    server = None
    try:
        if opts.protected:
            check_socket_room(root)
        folder, refused = opts.submissions, []
        if folder.is_file():
            unpacked = unpack(folder, root / "unzipped")
            folder, refused = unpacked.folder, unpacked.refused
        subs = find_submissions(folder, opts.assignment, notebooks, copy_to=root / "received", refused=refused)
        if refused:  # members outside every student folder: no row to put them in
            log(f"archive: {len(refused)} member(s) outside the student folders not unpacked: " +
                "; ".join(f"{printable(name)} ({why})" for name, why in refused[:5]))
        if not subs:
            raise InstructorError(f"no student folders in {opts.submissions}")
        opts.out.mkdir(parents=True, exist_ok=True)
        protections = sandbox.protections() if opts.protected else {}
        if opts.protected:
            left = sandbox.remove_leftovers()
            if left:
                log(f"removed {len(left)} runtime folder(s) and cgroup(s) left by grading processes that were killed")
        mode = (sandbox.summary(protections) if opts.protected else "UNPROTECTED (benchmark mode): no sandbox") + \
            "; verdicts: " + ("the judge" if opts.protected else "student's kernel (nbgrader)")
        log(f"grading {len(subs)} submission(s) of {opts.assignment} with {opts.jobs} job(s); {mode}")
        if not opts.cluster:  # these import for seconds: let them do it while nbgrader builds the template
            server = start_fork_server(opts, root, opts.course / "source" / opts.assignment)
            warm_grading_processes(root / "template")
            threading.Thread(target=course_cell_timeout, args=(opts,), daemon=True).start()
        template, max_score = build_template(opts, root)
        rules = late.load_rules(opts.course, opts.assignment, opts.due, opts.extensions)
        course = course_db.open_course(opts.course, opts.assignment, template) if opts.into_course else None
        kept, digests = course_db.plan(course, subs, opts.force) if course else ({}, {})
        rows: dict[str, Row] = dict(kept)
        rows.update({s.student_id: Row(s.student_id, "failed", reason=s.problem) for s in subs if s.problem})
        gradable = [(i, s) for i, s in enumerate(subs) if not s.problem and s.student_id not in kept]
        progress = Progress(len(subs), len(rows), max_score, rows)
        start = time.monotonic()
        if opts.cluster:  # the same jobs, run by dask workers (autograder/cluster.py)
            from autograder.cluster import grade_on_cluster
            extra = grade_on_cluster(opts, root, template, gradable, progress)
        else:
            extra = grade_here(opts, root, template, gradable, progress, server)
        todo = extra.pop("todo", [])  # (submission, job) graded on this machine
        ordered = [rows[s.student_id] for s in subs]
        collected = None if opts.submissions.is_file() else folder  # a .zip keeps notebooks only: no timestamp.txt
        late.assess_rows(rules, collected, opts.assignment, ordered)
        if course is not None:
            course_db.record_run(course, ordered, {s.student_id: Path(job["spec"]["course"]) for s, job in todo},
                                 digests, collected, rules, opts.due is not None, opts.extensions is not None)
        late.add_notes(ordered)
        run_info = {"assignment": opts.assignment, "submissions": len(subs), "jobs": opts.jobs,
                    "max_score": max_score, "protected": opts.protected, "protections": protections,
                    "verdicts": "judge" if opts.protected else "nbgrader",
                    "judge_processes": extra.pop("judge_processes") if opts.protected else None,
                    "submission_limits": None if opts.cluster else submission_limits(opts, todo),
                    "graded": sum(r.status == "graded" for r in ordered),
                    "failed": sum(r.status == "failed" for r in ordered),
                    "seconds": round(time.monotonic() - start, 2),
                    "mean_step_seconds": mean_steps([r.timings for r in ordered if r.timings]),
                    "step_meanings": STEP_NAMES, **extra}
        write_outputs(opts, ordered, max_score, run_info)
        log(f"done: {run_info['graded']} graded, {run_info['failed']} failed, {run_info['seconds']:.0f} s; "
            f"{mode}; wrote {opts.out / 'grades.csv'}")
        return 0
    finally:
        if server is not None:
            server.stop()
        if opts.keep_temp:
            log(f"kept temporary courses in {sandbox.keep_folder(root)}")
        else:
            sandbox.remove_tree(root)
