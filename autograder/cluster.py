"""Grade a batch on a dask.distributed cluster (issue 15): many machines, no shared file system.

    python -m autograder grade ASSIGNMENT SUBMISSIONS --out OUT --cluster tcp://HOST:8786

Who does what (README, "Grading on many machines"):

* **this process** (the client) finds and reads the submissions exactly as a local run does
  (``autograder.submissions``), builds the template course once (``pipeline.build_template``), and sends
  the scheduler one task per gradable submission: the student id and the notebooks' bytes. It writes
  grades.csv, checks.csv, feedback/ and run.json itself, from the rows that come back, in the same order as
  a local run: the files are the same bytes (feedback pages apart from nbgrader's timestamps).
* **every worker** gets the template course once, as bytes, in a worker plugin (``GradingPlugin``): it
  unpacks it into a private temporary folder and starts the fork server there (``autograder.server``: the
  judge's and the runners' imports, once per worker). Each task then runs the local pipeline's own job,
  unchanged (``pipeline.prepare_job`` + ``pipeline.run_job``: a course copy, a grading process, the
  sandboxed kernel, the judge) and returns plain data: the row as JSON text and the feedback page's bytes.
* **what crosses the network**: the template's files and the submissions' bytes (to the workers); JSON
  text, HTML bytes and the worker's address (back). Neither the scheduler nor this process runs anything a
  submission controls: they never load a notebook, and a result is accepted only after ``parse_result``
  has checked every field's type (``json.loads``, nothing else). Student code runs only in the workers'
  sandboxes, as it does locally; verdicts come from each worker's judge, which never runs student code.
* **a lost worker**: the scheduler gives its unfinished tasks to the other workers (a task whose worker
  dies three times, dask's ``allowed-failures``, becomes a ``failed`` row); each submission has one
  future, so one grading reaches the files even when a task ran twice. ``run.json`` says which worker
  graded what, and which submissions were started again after a worker was lost.

Workers run ``dask worker tcp://HOST:8786`` with ``DASK_DISTRIBUTED__WORKER__DAEMON=False`` (or
``--no-nanny``): each submission's grading process is a child of the worker, which a daemonic process may
not have (dask/distributed#2142); a worker that cannot grade says so when the plugin is registered.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import multiprocessing
import os
import threading
from pathlib import Path

from distributed import WorkerPlugin

from autograder import sandbox
from autograder.pipeline import (Options, Progress, Row, check_socket_room, course_cell_timeout, grading_settings, log,
                                 prepare_job, run_job, start_fork_server, warm_grading_processes)
from autograder.submissions import InstructorError, Submission

STARTED_TOPIC = "ftlab-grading-started"  # worker events: which worker started which submission
MAX_RESULT_BYTES = 64 * 2**20  # one task's answer (row JSON + feedback page; pages are capped at a few MB)
CONNECT_TIMEOUT = 30  # seconds to reach the scheduler
WORKER_WAIT = 120  # seconds to wait for a first worker
TASK_RETRIES = 1  # a task that raised (not a failed grading: that is a row) runs once more, elsewhere if it can
CHECK_FIELDS = {"notebook": str, "check": str, "score": (int, float), "max_score": (int, float), "passed": bool,
                "judged_by": str, "message": str}
DAEMON_HELP = ("this dask worker's process is daemonic and cannot start grading processes: start workers with "
               "DASK_DISTRIBUTED__WORKER__DAEMON=False in their environment (or `dask worker --no-nanny`)")


# ----------------------------------------------------------------------------- the worker side
def template_files(template: Path) -> dict[str, bytes]:
    """The template course as plain data: relative path -> bytes (regular files only)."""
    return {str(p.relative_to(template)): p.read_bytes() for p in sorted(template.rglob("*"))
            if p.is_file() and not p.is_symlink()}


def write_files(files: dict[str, bytes], folder: Path) -> Path:
    for name, data in files.items():
        target = (folder / name).resolve()
        if folder.resolve() not in target.parents:
            raise ValueError(f"template file outside the template: {name!r}")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return folder


def worker_settings(opts: Options) -> dict:
    """What a worker needs of the run's options (plain data)."""
    return {"assignment": opts.assignment, "cell_timeout": opts.cell_timeout, "protected": opts.protected,
            "submission_timeout": opts.submission_timeout, "memory_bytes": opts.memory_bytes,
            "keep_temp": opts.keep_temp, "environment": grading_settings()}


class GradingPlugin(WorkerPlugin):
    """Once per worker: the template course unpacked, the fork server started; ``grade`` runs one task."""

    idempotent = False

    def __init__(self, files: dict[str, bytes], settings: dict):
        self.files, self.settings = files, settings
        digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
        for name in sorted(files):
            digest.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
        self.name = f"ftlab-grading-{settings['assignment']}-{digest.hexdigest()[:12]}"

    def setup(self, worker) -> None:
        if multiprocessing.current_process().daemon:
            raise RuntimeError(DAEMON_HELP)
        os.environ.update(self.settings["environment"])  # the client's FTLAB_WEIGHTS: the same checks' weights
        self.root = sandbox.private_folder("ftlab-worker-")
        if self.settings["protected"]:
            check_socket_room(self.root)
        self.template = write_files(self.files, self.root / "template")
        for name in ("received", "out"):
            (self.root / name).mkdir()
        s = self.settings
        self.opts = Options(assignment=s["assignment"], submissions=self.root / "received", out=self.root / "out",
                            jobs=worker.state.nthreads, course=self.template, cell_timeout=s["cell_timeout"],
                            submission_timeout=s["submission_timeout"], memory_bytes=s["memory_bytes"],
                            protected=s["protected"], keep_temp=s["keep_temp"])
        self.counter, self.lock, self.server = itertools.count(), threading.Lock(), None
        if self.opts.protected:  # what killed workers on this machine left behind (sandbox.remove_leftovers)
            sandbox.remove_leftovers()
        self.server = start_fork_server(self.opts, self.root, self.template / "source" / self.opts.assignment)
        self.processes = "forked by the fork server" if self.server else "fresh interpreters"
        warm_grading_processes(self.template)  # the grading processes' fork server: nbgrader warm, once per worker
        course_cell_timeout(self.opts)  # read once here (it imports nbgrader), not in the first task

    def teardown(self, worker) -> None:
        if self.server is not None:
            self.server.stop()
        if self.opts.keep_temp:
            sandbox.keep_folder(self.root)
        else:
            sandbox.remove_tree(self.root)

    def grade(self, worker, student_id: str, notebooks: dict[str, bytes]) -> tuple[str, bytes | None]:
        """One submission, graded here exactly as a local run grades it: (row JSON, feedback page bytes)."""
        with self.lock:
            index = next(self.counter)
        worker.log_event(STARTED_TOPIC, {"student_id": student_id, "worker": worker.address})
        folder = self.root / "received" / f"{index:05d}"
        folder.mkdir(parents=True)
        sub = Submission(student_id, notebooks={name: folder / name for name in notebooks})
        for name, data in notebooks.items():
            if "/" in name or name.startswith("."):
                raise ValueError(f"not a notebook name: {name!r}")
            sub.notebooks[name].write_bytes(data)
        job = prepare_job(self.opts, self.root, self.template, sub, index)
        if self.server is not None:
            job["fork_server"] = str(self.server.socket_path)
        try:
            row = run_job(self.opts, job, sub)
            page = row.feedback.read_bytes() if row.feedback else None
        finally:
            if not self.opts.keep_temp:
                sandbox.remove_tree(job["dir"])
                sandbox.remove_tree(folder)
        answer = {"student_id": row.student_id, "status": row.status, "reason": row.reason, "checks": row.checks,
                  "seconds": row.seconds, "timings": row.timings, "worker": worker.address,
                  "processes": self.processes}
        return json.dumps(answer), page


def grade_task(plugin_name: str, student_id: str, notebooks: dict[str, bytes]) -> tuple[str, bytes | None]:
    """The task a worker runs (by name: workers import this module from their own installation)."""
    from distributed import get_worker

    worker = get_worker()
    plugin = worker.plugins.get(plugin_name)
    if plugin is None:  # raised, not a row: dask retries it, on another worker if there is one
        raise RuntimeError(f"worker {worker.address} has no grading plugin {plugin_name}")
    return plugin.grade(worker, student_id, notebooks)


# ----------------------------------------------------------------------------- the client side
def parse_result(value, student_id: str) -> tuple[Row, str, str, bytes | None]:
    """(row, worker, processes, feedback bytes) from a task's answer, accepted only as plain data of the
    expected shape (ValueError otherwise)."""
    if not (isinstance(value, (tuple, list)) and len(value) == 2 and isinstance(value[0], str)
            and (value[1] is None or isinstance(value[1], bytes))):
        raise ValueError("the worker's answer is not (JSON text, page bytes)")
    if len(value[0]) + len(value[1] or b"") > MAX_RESULT_BYTES:
        raise ValueError("the worker's answer is too large")
    data = json.loads(value[0])
    strings = ("student_id", "status", "reason", "worker", "processes")
    if not isinstance(data, dict) or any(not isinstance(data.get(k), str) for k in strings):
        raise ValueError("the worker's answer lacks a field")
    if data["student_id"] != student_id or data["status"] not in ("graded", "failed"):
        raise ValueError("the worker's answer is for another submission or has an unknown status")
    checks = data.get("checks")
    if not isinstance(checks, list) or any(
            not isinstance(c, dict) or set(c) != set(CHECK_FIELDS)
            or any(not isinstance(c[k], t) or (t != bool and isinstance(c[k], bool)) for k, t in CHECK_FIELDS.items())
            for c in checks):
        raise ValueError("the worker's checks are not the expected records")
    timings = data.get("timings")
    if not isinstance(timings, dict) or any(not isinstance(v, (int, float, type(None))) or isinstance(v, bool)
                                            for v in timings.values()):
        raise ValueError("the worker's timings are not numbers")
    seconds = data.get("seconds")
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool):
        raise ValueError("the worker's seconds are not a number")
    row = Row(student_id, data["status"], reason=data["reason"], checks=checks, seconds=float(seconds),
              timings=timings)
    if row.status == "graded":
        row.score = sum(c["score"] for c in checks)
    return row, data["worker"], data["processes"], value[1]


def failed_task_reason(error: BaseException) -> str:
    """A failed row's reason when a task never produced an answer (workers lost, a bug)."""
    if type(error).__name__ == "KilledWorker":
        return "the dask workers grading this submission died, again and again: not graded"
    return f"grading error on the cluster: {type(error).__name__}: {error}"[:300]


def connect(address: str):
    from distributed import Client

    try:
        client = Client(address, timeout=CONNECT_TIMEOUT, set_as_default=False)
    except (OSError, TimeoutError) as error:
        raise InstructorError(f"cannot reach the dask scheduler at {address}: {error}") from None
    try:
        client.wait_for_workers(1, timeout=WORKER_WAIT)
    except TimeoutError:
        client.close()
        raise InstructorError(f"no dask worker joined the scheduler at {address} within {WORKER_WAIT} s") from None
    return client


def register(client, plugin: GradingPlugin) -> None:
    try:
        client.register_plugin(plugin, name=plugin.name)
    except Exception as error:  # noqa: BLE001 - a worker that cannot grade (daemonic, missing packages)
        raise InstructorError(f"a dask worker cannot grade: {type(error).__name__}: {error}"[:500]) from None


def submission_bytes(sub: Submission) -> dict[str, bytes]:
    return {name: Path(path).read_bytes() for name, path in sub.notebooks.items()}


def started_elsewhere(client) -> dict[str, list[str]]:
    """Submissions started on more than one worker (a worker was lost while grading them): id -> workers."""
    starts: dict[str, list[str]] = {}
    for _, event in client.get_events(STARTED_TOPIC):
        if isinstance(event, dict):
            starts.setdefault(str(event.get("student_id")), []).append(str(event.get("worker")))
    return {sid: workers for sid, workers in starts.items() if len(workers) > 1}


def grade_on_cluster(opts: Options, root: Path, template: Path, gradable: list, progress: Progress) -> dict:
    """Grade ``gradable`` ([(index, Submission)]) on the scheduler at ``opts.cluster``; rows go to
    ``progress``. Returns run.json's extra entries (which worker graded what)."""
    from distributed import as_completed

    plugin = GradingPlugin(template_files(template), worker_settings(opts))
    client = connect(opts.cluster)
    try:
        workers = client.scheduler_info(n_workers=-1)["workers"]
        log(f"cluster {opts.cluster}: {len(workers)} worker(s), "
            f"{sum(w['nthreads'] for w in workers.values())} thread(s)")
        register(client, plugin)
        window = max(8, 4 * sum(w["nthreads"] for w in workers.values()))  # bytes in flight stay bounded
        pending, futures = iter(gradable), {}
        queue = as_completed(loop=client.loop)

        def submit_next() -> None:
            for index, sub in itertools.islice(pending, 1):
                future = client.submit(grade_task, plugin.name, sub.student_id, submission_bytes(sub),
                                       key=f"ftlab-{opts.assignment}-{index:05d}-{plugin.name[-12:]}",
                                       pure=False, retries=TASK_RETRIES)
                futures[future] = (index, sub)
                queue.add(future)

        for _ in range(window):
            submit_next()
        graded_by, processes = {}, set()
        feedback = root / "feedback-received"
        feedback.mkdir()
        for future in queue:
            index, sub = futures.pop(future)
            submit_next()
            row, worker = collect(future, sub, feedback / f"{index:05d}.html", processes)
            graded_by[sub.student_id] = worker
            progress.record(sub, row, where=f" on {worker}" if worker else "")
        return {"judge_processes": " and ".join(sorted(processes)) or "none",
                "cluster": {"scheduler": opts.cluster, "workers_at_start": sorted(workers),
                            "graded_by": graded_by, "started_again": started_elsewhere(client)}}
    finally:
        try:
            client.unregister_worker_plugin(plugin.name)
        except Exception:  # noqa: BLE001 - workers gone: nothing left to tear down there
            pass
        client.close()


def collect(future, sub: Submission, page_path: Path, processes: set) -> tuple[Row, str]:
    """The row of a finished task (a failed row when it never produced a valid answer), and its worker."""
    try:
        row, worker, how, page = parse_result(future.result(), sub.student_id)
    except Exception as error:  # noqa: BLE001 - one submission's failure, never the batch's
        return Row(sub.student_id, "failed", reason=failed_task_reason(error)), ""
    processes.add(how)
    if page is not None:
        page_path.write_bytes(page)
        row.feedback = page_path
    return row, worker

