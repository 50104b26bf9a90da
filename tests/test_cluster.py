"""Grading on a dask cluster (issue 15), with real processes: a ``dask scheduler`` and two ``dask worker``
processes on loopback, started here and always killed at the end.

One batch of the fixture assignment ``mini`` is graded twice: locally (``--jobs 2``) and on the cluster,
where one worker is killed (SIGKILL, its whole process group) while it grades its first submission. The
cluster run must still give every student one row, and grades.csv, checks.csv and every feedback page must
be the bytes of the local run. Plus fast unit tests of what the client accepts from a worker.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import BIN, REPO, fixture_course

FIXTURES = REPO / "tests" / "fixtures"
GRADED = ["reference", "edited_test", "wrong_name"]  # sent to the workers (wrong_name carries a note)
FAILED = ["invalid_json"]  # fails while reading: never leaves the client
TIMEOUT = 300  # bound on every process this module starts
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(\.\d+)?")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(argv: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    """A process in its own session (so its whole group can be killed), output into ``log``."""
    with open(log, "wb") as f:
        return subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, **(env or {})}, cwd=log.parent)


def stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def processes_under(folder: Path) -> list[int]:
    """Processes whose working folder or command line lies under ``folder`` (a worker's leftovers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if cwd.startswith(str(folder)) or str(folder) in cmdline:
            found.append(int(entry.name))
    return found


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A scheduler and two single-thread workers on 127.0.0.1; each worker's temporary files in its own folder."""
    from distributed import Client

    root = tmp_path_factory.mktemp("cluster")
    address = f"tcp://127.0.0.1:{free_port()}"
    procs, workers = [], []
    try:
        procs.append(start([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1],
                            "--no-dashboard"], root / "scheduler.log"))
        for name in ("w1", "w2"):
            tmp = root / f"{name}-tmp"
            tmp.mkdir()
            proc = start([str(BIN / "dask"), "worker", address, "--nthreads", "1", "--name", name, "--no-dashboard",
                          "--death-timeout", "60"], root / f"{name}.log",
                         env={"TMPDIR": str(tmp), "DASK_DISTRIBUTED__WORKER__DAEMON": "False"})
            procs.append(proc)
            workers.append({"name": name, "proc": proc, "tmp": tmp})
        with Client(address, timeout=60, set_as_default=False) as client:
            client.wait_for_workers(2, timeout=120)
            names = {w["name"]: a for a, w in client.scheduler_info(n_workers=-1)["workers"].items()}
        for worker in workers:
            worker["address"] = names[worker["name"]]
        yield {"address": address, "workers": workers, "root": root}
    finally:
        for proc in reversed(procs):
            stop(proc)
        for worker in workers:  # whatever a killed worker left running
            for pid in processes_under(worker["tmp"]):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


@pytest.fixture(scope="module")
def course(tmp_path_factory) -> Path:
    return fixture_course(tmp_path_factory.mktemp("course"))


@pytest.fixture(scope="module")
def submissions(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("subs") / "submissions"
    for student in GRADED + FAILED:
        shutil.copytree(FIXTURES / "submissions" / student, folder / student)
    return folder


def grade_args(course: Path, submissions: Path, out: Path, *more: str) -> list[str]:
    return [sys.executable, "-m", "autograder", "grade", "mini", str(submissions), "--out", str(out), "--course",
            str(course), "--cell-timeout", "8", "--memory", "2G", *more]


@pytest.fixture(scope="module")
def local(course, submissions, tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "out"
    done = subprocess.run(grade_args(course, submissions, out, "--jobs", "2"), capture_output=True, text=True,
                          timeout=TIMEOUT, cwd=out.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def started_on(client, worker: str) -> bool:
    """Has ``worker`` announced (to the scheduler) that it started grading a submission?"""
    from autograder.cluster import STARTED_TOPIC

    return any(event.get("worker") == worker for _, event in client.get_events(STARTED_TOPIC))


@pytest.fixture(scope="module")
def on_cluster(cluster, course, submissions, tmp_path_factory):
    """The same batch on the cluster; worker w1 is killed as soon as it has started a submission."""
    from distributed import Client

    out = tmp_path_factory.mktemp("on-cluster") / "out"
    victim = cluster["workers"][0]
    with open(out.parent / "stderr.log", "wb") as err:
        proc = subprocess.Popen(grade_args(course, submissions, out, "--cluster", cluster["address"]),
                                stdout=subprocess.DEVNULL, stderr=err, cwd=out.parent)
    try:
        deadline, killed = time.monotonic() + TIMEOUT, None
        with Client(cluster["address"], timeout=60, set_as_default=False) as client:
            while proc.poll() is None and time.monotonic() < deadline:
                if killed is None and started_on(client, victim["address"]):  # a submission under way there
                    stop(victim["proc"])
                    killed = time.monotonic()
                time.sleep(0.2)
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    time.sleep(3)  # what the killed worker left behind has a moment to notice
    return {"code": code, "out": out, "stderr": (out.parent / "stderr.log").read_text(), "killed": killed,
            "victim": victim, "survivor": cluster["workers"][1], "leftovers": processes_under(victim["tmp"])}


def test_a_batch_graded_on_the_cluster_is_byte_identical_to_a_local_run(local, on_cluster):
    assert on_cluster["code"] == 0, on_cluster["stderr"][-3000:]
    for name in ("grades.csv", "checks.csv"):
        assert (on_cluster["out"] / name).read_bytes() == (local / name).read_bytes(), name
    pages = sorted(p.name for p in (local / "feedback").iterdir())
    assert pages == sorted(p.name for p in (on_cluster["out"] / "feedback").iterdir())
    assert len(pages) == len(GRADED + FAILED)
    for name in pages:
        ours, theirs = (TIMESTAMP.sub("T", (folder / "feedback" / name).read_text()) for folder in (on_cluster["out"], local))
        assert ours == theirs, name


def test_a_worker_killed_mid_batch_loses_nothing(on_cluster):
    assert on_cluster["killed"] is not None, "w1 never started a submission"
    info = json.loads((on_cluster["out"] / "run.json").read_text())
    graded_by = info["cluster"]["graded_by"]
    assert sorted(graded_by) == sorted(GRADED)  # each submission reported once, the failed one never sent
    victim, survivor = on_cluster["victim"]["address"], on_cluster["survivor"]["address"]
    again = info["cluster"]["started_again"]
    assert again and all(workers[0] == victim and workers[-1] == survivor for workers in again.values()), info
    assert all(graded_by[student] == survivor for student in again)
    assert info["graded"] == len(GRADED) and info["failed"] == len(FAILED)
    from autograder import server
    assert info["judge_processes"] == ("forked by the fork server" if server.supported() else "fresh interpreters")


def test_progress_and_run_summary_cover_the_cluster(on_cluster):
    stderr = on_cluster["stderr"]
    assert "cluster tcp://127.0.0.1:" in stderr and "2 worker(s)" in stderr
    lines = [line for line in stderr.splitlines() if line.startswith("[")]
    assert len(lines) == len(GRADED) and all("ETA" in line for line in lines), stderr  # as a local run: one per job
    assert sum(" on tcp://127.0.0.1:" in line for line in lines) == len(GRADED)
    steps = json.loads((on_cluster["out"] / "run.json").read_text())["mean_step_seconds"]
    assert {"course_copy", "kernel_start", "cells", "gradebook", "judge", "feedback"} <= set(steps), steps


def test_a_killed_worker_leaves_no_grading_process_running(on_cluster):
    assert on_cluster["leftovers"] == [], [
        (pid, Path(f"/proc/{pid}/cmdline").read_bytes()[:200]) for pid in on_cluster["leftovers"]
        if Path(f"/proc/{pid}").exists()]


# ----------------------------------------------------------------------------- what the client accepts (fast)
def answer(**change) -> tuple[str, bytes | None]:
    data = {"student_id": "alice", "status": "graded", "reason": "", "worker": "tcp://w:1", "processes": "forked",
            "seconds": 1.5, "timings": {"cells": 0.5, "imports": None},
            "checks": [{"notebook": "mini.ipynb", "check": "correct_add", "score": 2.0, "max_score": 2.0,
                        "passed": True, "judged_by": "judge", "message": ""}]}
    page = change.pop("page", b"<html></html>")
    for key, value in change.items():
        if key.startswith("check_"):
            data["checks"][0][key[len("check_"):]] = value
        else:
            data[key] = value
    return json.dumps(data), page


def test_a_well_formed_answer_becomes_a_row():
    from autograder.cluster import parse_result

    row, worker, processes, page = parse_result(answer(), "alice")
    assert (row.student_id, row.status, row.score, worker, page) == ("alice", "graded", 2.0, "tcp://w:1", b"<html></html>")


@pytest.mark.parametrize("value", [
    answer(student_id="bob"), answer(status="passed"), answer(check_score="2"), answer(check_passed=1),
    answer(check_score=True), answer(check_extra="x"), answer(timings={"cells": "1"}), answer(seconds=None),
    answer(page="<html>"), (b"{}", None), ("[]", None), ({"student_id": "alice"}, None), ("x" * (65 * 2**20), None),
])
def test_anything_but_the_expected_plain_data_is_refused(value):
    from autograder.cluster import parse_result

    with pytest.raises(ValueError):
        parse_result(value, "alice")
