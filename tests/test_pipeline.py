"""The grading command on the robustness fixtures (issue 6) and the reach/bounds attacks (issue 7).

One real run of ``python -m autograder grade`` over every fixture submission (--jobs 2), then a second
run over a subset (as a .zip) to prove re-grading gives identical rows. The fixture assignment ``mini``
and the submissions are made by tests/fixtures/make_fixtures.py; expected.json holds each outcome.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest

from conftest import REPO

FIXTURES = REPO / "tests" / "fixtures"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())
LOOPBACK_PORT = 47613  # the loopback_socket fixture tries to connect here
CELL_TIMEOUT = "8"


def run_cli(*args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "autograder", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=900)


def read_rows(out: Path) -> dict[str, dict]:
    with open(out / "grades.csv", newline="") as f:
        return {row["student_id"]: row for row in csv.DictReader(f)}


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


class Listener(threading.Thread):
    """A TCP server on the host's loopback: records anything a submission manages to send it."""

    def __init__(self):
        super().__init__(daemon=True)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", LOOPBACK_PORT))
        self.sock.listen()
        self.sock.settimeout(0.5)
        self.received, self.stopped = [], False

    def run(self):
        while not self.stopped:
            try:
                conn, _ = self.sock.accept()
                self.received.append(conn.recv(1000))
                conn.close()
            except OSError:
                continue
        self.sock.close()


@pytest.fixture(scope="module")
def course(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("course")
    shutil.copy(REPO / "nbgrader_config.py", root)
    shutil.copytree(FIXTURES / "course" / "source", root / "source")
    return root


@pytest.fixture(scope="module")
def batch(course, tmp_path_factory):
    work = tmp_path_factory.mktemp("batch")
    submissions = work / "submissions"
    shutil.copytree(FIXTURES / "submissions", submissions)
    before = snapshot(submissions)
    listener = Listener()
    listener.start()
    try:
        done = run_cli("grade", "mini", str(submissions), "--out", str(work / "out"), "--jobs", "2",
                       "--course", str(course), "--cell-timeout", CELL_TIMEOUT, "--memory", "2G", cwd=work)
    finally:
        listener.stopped = True
        listener.join()
    return {"work": work, "submissions": submissions, "before": before, "done": done, "out": work / "out",
            "listener": listener.received}


def test_batch_completes_with_a_row_per_student(batch):
    assert batch["done"].returncode == 0, batch["done"].stderr[-3000:]
    rows = read_rows(batch["out"])
    assert sorted(rows) == sorted(EXPECTED)
    assert "ETA" in batch["done"].stderr  # progress with an estimate of the time left
    from autograder import server
    info = json.loads((batch["out"] / "run.json").read_text())
    assert info["verdicts"] == "judge", info
    assert info["judge_processes"] == ("forked by the fork server" if server.supported() else "fresh interpreters"), info


@pytest.mark.parametrize("student", sorted(EXPECTED))
def test_each_fixture_gets_its_expected_outcome(batch, student):
    status, score, reason_word = EXPECTED[student]
    row = read_rows(batch["out"])[student]
    assert row["status"] == status, row
    assert row["max_score"] == "5"
    if score is None:
        assert row["score"] == ""
    else:
        assert float(row["score"]) == score, row
    if reason_word:
        assert reason_word in row["reason"], row
    else:
        assert row["reason"] == "", row
    assert (batch["out"] / "feedback" / f"{student}.html").stat().st_size > 0


def test_submitted_files_are_byte_identical(batch):
    assert snapshot(batch["submissions"]) == batch["before"]


def test_per_check_csv_matches_the_grades(batch):
    with open(batch["out"] / "checks.csv", newline="") as f:
        checks = list(csv.DictReader(f))
    rows = read_rows(batch["out"])
    for student, row in rows.items():
        mine = [c for c in checks if c["student_id"] == student]
        if row["status"] == "graded":
            assert sorted(c["check"] for c in mine) == ["correct_add", "correct_mean", "correct_q2"]
            assert sum(float(c["score"]) for c in mine) == float(row["score"])
        else:
            assert mine == []
    infinite = {c["check"]: c for c in checks if c["student_id"] == "infinite_loop"}
    assert infinite["correct_add"]["passed"] == "False" and infinite["correct_mean"]["passed"] == "True"


def test_run_summary_states_the_protections(batch):
    info = json.loads((batch["out"] / "run.json").read_text())
    assert set(info["protections"]) >= {"separate_user", "hidden_files", "no_network", "limits"}
    banner = batch["done"].stderr.split("sandbox: on: ")[1].split("\n")[0]
    on, _, off = banner.partition("; OFF: ")
    on = on.split("; verdicts")[0]
    for name, state in info["protections"].items():  # each one on the side run.json says it is on
        assert (name in on.split(", ")) == state["active"], (name, state, banner)
        assert (name in off) == (not state["active"]), (name, state, banner)
    if os.geteuid() == 0:
        assert all(state["active"] for state in info["protections"].values()), info["protections"]
    assert info["graded"] + info["failed"] == len(EXPECTED)


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox's user/namespace protections need root")


@needs_root
@pytest.mark.parametrize("student,what", [("read_instructor_files", "instructor files"),
                                          ("write_submissions", "write submissions"),
                                          ("loopback_socket", "loopback"), ("unbounded_memory", "memory")])
def test_reach_and_bounds_attacks_are_blocked_in_the_students_kernel(batch, student, what):
    """The attack code ran in the student's kernel (its printed output is in the feedback) and was stopped."""
    page = (batch["out"] / "feedback" / f"{student}.html").read_text()
    assert f"REACH {what}: blocked" in page
    assert f"REACH {what}: LEAKED" not in page


@needs_root
def test_nothing_reached_the_hosts_loopback(batch):
    assert batch["listener"] == []


def test_regrading_gives_identical_rows_and_accepts_a_zip(batch, course):
    """Second run, over a zip of a subset in nbgrader's submitted/<student>/<assignment>/ layout."""
    subset = ["reference", "duplicated_test", "edited_metadata", "os_exit", "wrong_name", "invalid_json", "blank"]
    archive = batch["work"] / "again.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for student in subset:
            for path in (batch["submissions"] / student).iterdir():
                zf.write(path, f"collected/submitted/{student}/mini/{path.name}")
    done = run_cli("grade", "mini", str(archive), "--out", str(batch["work"] / "again"), "--jobs", "2",
                   "--course", str(course), "--cell-timeout", CELL_TIMEOUT, "--memory", "2G", cwd=batch["work"])
    assert done.returncode == 0, done.stderr[-3000:]
    first, second = read_rows(batch["out"]), read_rows(batch["work"] / "again")
    grades = ("student_id", "score", "max_score", "status")
    assert {s: [second[s][k] for k in grades] for s in second} == {s: [first[s][k] for k in grades] for s in subset}
    assert second["invalid_json"] == first["invalid_json"] and second["wrong_name"] == first["wrong_name"]


@pytest.mark.parametrize("args,message", [
    (["grade", "no_such_assignment", "{subs}", "--out", "{out}"], "unknown assignment"),
    (["grade", "mini", "{missing}", "--out", "{out}"], "submissions not found"),
    (["grade", "mini", "{notzip}", "--out", "{out}"], "folder or a .zip"),
    (["grade", "mini", "{badzip}", "--out", "{out}"], "cannot read submissions archive"),
])
def test_instructor_errors_exit_nonzero_with_one_line(course, tmp_path, args, message):
    (tmp_path / "subs" / "alice").mkdir(parents=True)
    (tmp_path / "notes.txt").write_text("not submissions")
    (tmp_path / "bad.zip").write_bytes(b"PK\x03\x04 truncated")
    names = {"subs": tmp_path / "subs", "out": tmp_path / "out", "missing": tmp_path / "nope",
             "notzip": tmp_path / "notes.txt", "badzip": tmp_path / "bad.zip"}
    done = run_cli(*[a.format(**names) for a in args], "--course", str(course), cwd=tmp_path)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], done.stderr
    assert not (tmp_path / "out" / "grades.csv").exists()


def test_without_the_fork_server_grading_goes_on(course, tmp_path, monkeypatch):
    """A fork server that cannot start costs time, not grades: judges and runners start as fresh interpreters."""
    from autograder import pipeline, server

    def refuse(cls, *args, **kwargs):
        raise RuntimeError("the fork server did not start: refused by this test")

    monkeypatch.setattr(server.ForkServer, "start", classmethod(refuse))
    submissions = tmp_path / "submissions"
    shutil.copytree(FIXTURES / "submissions" / "reference", submissions / "reference")
    code = pipeline.grade(pipeline.Options(assignment="mini", submissions=submissions, out=tmp_path / "out", jobs=1,
                                           course=course))
    info = json.loads((tmp_path / "out" / "run.json").read_text())
    assert code == 0 and info["verdicts"] == "judge", info
    assert info["judge_processes"] == "fresh interpreters", info
    assert read_rows(tmp_path / "out")["reference"]["score"] == "5"


def test_the_cell_limit_is_the_courses_execute_timeout(tmp_path):
    """Without --cell-timeout, every cell and every call of a student function gets the course's
    c.Execute.timeout (nbgrader_config.py), not a number of the grader's own."""
    from autograder.pipeline import Options, course_cell_timeout

    (tmp_path / "nbgrader_config.py").write_text("c = get_config()\nc.Execute.timeout = 7\n")
    assert course_cell_timeout(Options(assignment="x", submissions=tmp_path, out=tmp_path, course=tmp_path)) == 7
    assert course_cell_timeout(Options(assignment="x", submissions=tmp_path, out=tmp_path, course=REPO)) == 180
