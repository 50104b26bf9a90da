"""The grading command on the robustness fixtures (issue 6) and the reach/bounds attacks (issue 7).

One real run of ``python -m autograder grade`` over every fixture submission (--jobs 2), then a second
run over a subset (as a .zip) to prove re-grading gives identical rows. The fixture assignment ``mini``
and the submissions are made by tests/fixtures/make_fixtures.py; expected.json holds each outcome. Issue 12:
the cases git cannot hold (links, a FIFO, an oversized notebook) are made at run time in the batch's copy;
the zip cases (archives/hostile.zip) ride along in the second run; CSV cells and output caps are checked
on the same runs, plus a few fast unit tests.
"""
from __future__ import annotations

import csv
import importlib.util
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest

from conftest import REPO, descendants, fixture_course, run_python, wait_for
from autograder.reports import FORMULA_START, NUMBER, neutralise, write_reports
from autograder.submissions import feedback_name, printable

FIXTURES = REPO / "tests" / "fixtures"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())
EXPECTED_ARCHIVE = json.loads((FIXTURES / "expected_archive.json").read_text())
_spec = importlib.util.spec_from_file_location("make_fixtures", FIXTURES / "make_fixtures.py")
make_fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_fixtures)
LOOPBACK_PORT = 47613  # the loopback_socket fixture tries to connect here
CELL_TIMEOUT = "8"


def run_cli(*args, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "autograder", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=900, env={**os.environ, **(env or {})})


def read_rows(out: Path) -> dict[str, dict]:
    """grades.csv by student id, keyed by the folder name (as the fixtures name it) where the CSV shows it
    neutralised."""
    with open(out / "grades.csv", newline="", encoding="utf-8") as f:
        rows = {row["student_id"]: row for row in csv.DictReader(f)}
    names = {csv_id(name): name for name in [*EXPECTED, *EXPECTED_ARCHIVE]}
    return {names.get(sid, sid): row for sid, row in rows.items()}


def csv_id(folder_name: str) -> str:
    """How grades.csv writes a student folder's name (neutralised, printed safely)."""
    return neutralise(printable(folder_name, limit=1000))


def snapshot(folder: Path) -> dict[str, object]:
    """Every entry below ``folder``, never followed: a file's bytes, a link's target, a FIFO's kind."""
    found = {}
    for top, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(top) / name
            mode = path.lstat().st_mode
            key = str(path.relative_to(folder))
            if stat.S_ISLNK(mode):
                found[key] = ("link", os.readlink(path))
            elif stat.S_ISREG(mode):
                found[key] = path.read_bytes()
            elif not stat.S_ISDIR(mode):
                found[key] = ("special", stat.S_IFMT(mode))
    return found


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
    return fixture_course(tmp_path_factory.mktemp("course"))


@pytest.fixture(scope="module")
def planted():
    """A world-readable secret outside every folder the old sandbox hid (a deny-list): /srv as root, the home
    folder otherwise. The read_outside_view fixture finds it through $FTLAB_PLANTED_SECRET (FTLAB_* reach
    the kernel) and scores its point only if it can read it."""
    base = Path("/srv") if os.geteuid() == 0 and os.access("/srv", os.W_OK) else Path.home()
    folder = base / f"ftlab-planted-{os.getpid()}"
    folder.mkdir(mode=0o755)
    os.chmod(folder, 0o755)
    secret = folder / "answers.txt"
    secret.write_text('answer_q2 = "B"\n')
    os.chmod(secret, 0o644)
    yield secret
    shutil.rmtree(folder)


@pytest.fixture(scope="module")
def batch(course, planted, tmp_path_factory):
    work = tmp_path_factory.mktemp("batch")
    submissions = work / "submissions"
    shutil.copytree(FIXTURES / "submissions", submissions)
    make_fixtures.make_runtime_fixtures(submissions, course)
    before = snapshot(submissions)
    listener = Listener()
    listener.start()
    try:
        done = run_cli("grade", "mini", str(submissions), "--out", str(work / "out"), "--jobs", "2",
                       "--course", str(course), "--cell-timeout", CELL_TIMEOUT, "--memory", "2G", cwd=work,
                       env={"FTLAB_PLANTED_SECRET": str(planted)})
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
    page = batch["out"] / "feedback" / feedback_name(printable(student, limit=1000))
    assert 0 < page.stat().st_size < 3 * 2**20, page  # output capped in bytes: a page stays a few MB


def test_submitted_files_are_byte_identical(batch):
    assert snapshot(batch["submissions"]) == batch["before"]


def test_a_link_to_the_instructors_notebook_shows_no_solution(batch):
    """The submission that links to source/mini/mini.ipynb: failed, and its page holds none of the source."""
    page = (batch["out"] / "feedback" / "symlink_to_source.html").read_text()
    source = (FIXTURES / "course" / "source" / "mini" / "mini.ipynb").read_text()
    assert "BEGIN SOLUTION" in source and "BEGIN SOLUTION" not in page and "HIDDEN TESTS" not in page
    assert "symbolic link" in page


def test_a_200_mb_print_is_cut_in_the_feedback(batch):
    page = (batch["out"] / "feedback" / "output_flood_bytes.html").read_text()
    assert "output cut" in page and "x" * 2000 not in page
    assert (batch["out"] / "feedback" / "output_flood_bytes.html").stat().st_size < 2**20


def test_no_csv_cell_is_a_formula(batch):
    """OWASP: no cell of grades.csv or checks.csv starts with = + - @ tab or CR, unless it is a number; the
    fixtures put a formula in a student id, a reason and a check's message."""
    for name in ("grades.csv", "checks.csv"):
        with open(batch["out"] / name, newline="", encoding="utf-8") as f:
            cells = [cell for row in csv.reader(f) for cell in row]
        assert cells
        bad = [c for c in cells if c.startswith(FORMULA_START) and not NUMBER.fullmatch(c)]
        assert bad == [], (name, bad)
    with open(batch["out"] / "checks.csv", newline="", encoding="utf-8") as f:
        message = next(c["message"] for c in csv.DictReader(f)
                       if c["student_id"] == "formula_message" and c["check"] == "correct_q2")
    assert message.startswith('\'=HYPERLINK("http://x","y") is not one of A, B, C, D'), message
    with open(batch["out"] / "grades.csv", newline="", encoding="utf-8") as f:
        assert "'=HYPERLINK(A1,B1)" in [row["student_id"] for row in csv.DictReader(f)]  # the id, neutralised


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


# each reach/bounds fixture: what its feedback page prints, and the protection (run.json) that must stop it
REACH_CLAIMS = [("read_instructor_files", "instructor files", "hidden_files"),
                ("write_submissions", "write submissions", "hidden_files"),
                ("read_outside_view", "outside view", "hidden_files"),
                ("loopback_socket", "loopback", "no_network"), ("unbounded_memory", "memory", "limits"),
                ("fork_bomb", "processes", "processes_per_submission"),
                ("memory_children", "memory of children", "memory_per_submission"),
                ("write_job_log", "host file descriptors", "no_host_disk_writes"),
                ("fill_runtime_folder", "runtime folder", "separate_user")]  # the folder goes back to root


def assert_reach_blocked(out: Path, student: str, what: str, protection: str) -> None:
    """The attack code ran in the student's kernel (its printed output is in the feedback) and, where run.json
    says the protection is active on this host, was stopped."""
    state = json.loads((out / "run.json").read_text())["protections"][protection]
    page = (out / "feedback" / f"{student}.html").read_text()
    assert f"REACH {what}: " in page.replace('LEAK" + "ED', ""), f"the attack did not run: {student}"
    if not state["active"]:
        pytest.skip(f"{protection} is not active on this host: {state['how']}")
    assert f"REACH {what}: blocked" in page
    assert f"REACH {what}: LEAKED" not in page


@pytest.mark.parametrize("student,what,protection", REACH_CLAIMS)
def test_reach_and_bounds_attacks_are_blocked_in_the_students_kernel(batch, student, what, protection):
    assert_reach_blocked(batch["out"], student, what, protection)


def test_nothing_reached_the_hosts_loopback(batch):
    if not json.loads((batch["out"] / "run.json").read_text())["protections"]["no_network"]["active"]:
        pytest.skip("no network namespace on this host")
    assert batch["listener"] == []


def test_run_json_says_which_submission_limits_held(batch):
    info = json.loads((batch["out"] / "run.json").read_text())
    limits, active = info["submission_limits"], info["protections"]
    assert limits["held"] == {"memory": active["memory_per_submission"]["active"],
                              "processes": active["processes_per_submission"]["active"]}, info
    if limits["held"]["memory"]:
        assert "memory_children" in limits["memory_limit_reached"], limits
    if limits["held"]["processes"]:
        assert "fork_bomb" in limits["process_limit_reached"], limits


# ---- the same grading as a plain user (issue 12): the README's set-up and command, no root ------------------
PLAIN_USER = "ftlab-grader"
AS_PLAIN_USER = r"""
set -e
# This machine's interpreter lives below /root (mode 700), where no other user may go: show it to the plain
# user in this private mount namespace, as a world-readable /usr/bin/python3 would be on another host.
prefix={prefix}
if ! setpriv --reuid {user} --regid {user} --init-groups test -x "$prefix/bin"; then
    hidden=$prefix; while [ "$(dirname "$hidden")" != / ] && ! setpriv --reuid {user} --regid {user} --init-groups test -x "$(dirname "$hidden")"; do hidden=$(dirname "$hidden"); done
    keep=$(mktemp -d); mount --bind "$prefix" "$keep"
    mount -t tmpfs -o mode=755,size=1m tmpfs "$hidden"; mkdir -p "$prefix"; mount --move "$keep" "$prefix"
fi
exec setpriv --reuid {user} --regid {user} --init-groups env -i HOME={home} USER={user} LANG=C.UTF-8     PATH=/usr/bin:/bin FTLAB_PLANTED_SECRET={planted} bash -c '
        cd {repo} && make env && export PATH={repo}/.venv/bin:$PATH &&
        cd {work} && python -m autograder grade mini subs --out out --course course --jobs 2 --cell-timeout 8 --memory 2G'
"""
# fork_bomb is left out: without root there is no per-submission process group, and the per-user process
# limit it then meets counts the grading user's own processes too (README, Known limits)
PLAIN_STUDENTS = ["reference", "read_outside_view", "loopback_socket"]


@pytest.fixture(scope="module")
def plain_user_run(course, planted, tmp_path_factory):
    import pwd
    if os.geteuid() != 0 or not all(shutil.which(t) for t in ("useradd", "userdel", "setpriv", "unshare", "make")):
        pytest.skip("needs root and useradd, setpriv, unshare, make (CI runs as root)")
    made = False
    try:
        pwd.getpwnam(PLAIN_USER)
    except KeyError:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", PLAIN_USER], check=True)
        made = True
    user = pwd.getpwnam(PLAIN_USER)
    work = Path(user.pw_dir) / f"ftlab-test-{os.getpid()}"
    try:
        shutil.copytree(course, work / "course")
        for student in PLAIN_STUDENTS:
            shutil.copytree(FIXTURES / "submissions" / student, work / "subs" / student)
        subprocess.run(["chown", "-R", f"{user.pw_uid}:{user.pw_gid}", str(work)], check=True)
        before = snapshot(work / "subs")
        script = AS_PLAIN_USER.format(prefix=os.path.realpath(sys.base_prefix), user=PLAIN_USER, home=user.pw_dir,
                                      planted=planted, repo=REPO, work=work)
        done = subprocess.run(["unshare", "--mount", "--propagation", "private", "bash", "-c", script],
                              capture_output=True, text=True, timeout=900)
        out = tmp_path_factory.mktemp("plain-user") / "out"
        if (work / "out").exists():
            shutil.copytree(work / "out", out)
        yield {"done": done, "out": out, "unchanged": snapshot(work / "subs") == before}
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if made:
            subprocess.run(["userdel", "--remove", PLAIN_USER], capture_output=True)


def test_a_plain_user_grades_with_the_same_verdicts_as_root(plain_user_run):
    done = plain_user_run["done"]
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "Nothing to be done" in done.stdout or "is up to date" in done.stdout, done.stdout  # make env
    rows = read_rows(plain_user_run["out"])
    assert sorted(rows) == sorted(PLAIN_STUDENTS)
    for student in PLAIN_STUDENTS:  # EXPECTED: the rows a root run gives (test_each_fixture_gets_its_...)
        status, score, reason_word = EXPECTED[student]
        row = rows[student]
        assert (row["status"], float(row["score"])) == (status, score), row
        assert (reason_word in row["reason"]) if reason_word else row["reason"] == "", row
    assert plain_user_run["unchanged"], "the submitted files changed"
    info = json.loads((plain_user_run["out"] / "run.json").read_text())
    assert not info["protections"]["separate_user"]["active"]
    assert "not root" in info["protections"]["memory_per_submission"]["how"], info["protections"]


@pytest.mark.parametrize("student,what,protection", [c for c in REACH_CLAIMS if c[0] in PLAIN_STUDENTS])
def test_a_plain_users_sandbox_blocks_what_its_host_allows(plain_user_run, student, what, protection):
    assert_reach_blocked(plain_user_run["out"], student, what, protection)


@pytest.fixture(scope="module")
def again(batch, course):
    """Second run, over a zip of a subset in nbgrader's submitted/<student>/<assignment>/ layout, with the
    members of archives/hostile.zip (links, absolute and '..' paths, a zip bomb) appended."""
    subset = ["reference", "duplicated_test", "edited_metadata", "os_exit", "wrong_name", "invalid_json", "blank"]
    archive = batch["work"] / "again.zip"
    with zipfile.ZipFile(archive, "w") as zf, zipfile.ZipFile(make_fixtures.ARCHIVE) as hostile:
        for student in subset:
            for path in (batch["submissions"] / student).iterdir():
                zf.write(path, f"collected/submitted/{student}/mini/{path.name}")
        for info in hostile.infolist():
            with hostile.open(info) as member:
                zf.writestr(info, member.read())
    before = archive.read_bytes()
    done = run_cli("grade", "mini", str(archive), "--out", str(batch["work"] / "again"), "--jobs", "2",
                   "--course", str(course), "--cell-timeout", CELL_TIMEOUT, "--memory", "2G", cwd=batch["work"])
    return {"done": done, "subset": subset, "out": batch["work"] / "again", "unchanged": archive.read_bytes() == before}


def test_regrading_gives_identical_rows_and_accepts_a_zip(batch, again):
    done, subset = again["done"], again["subset"]
    assert done.returncode == 0, done.stderr[-3000:]
    first, second = read_rows(batch["out"]), read_rows(again["out"])
    grades = ("student_id", "score", "max_score", "status")
    assert {s: [second[s][k] for k in grades] for s in subset} == {s: [first[s][k] for k in grades] for s in subset}
    assert second["invalid_json"] == first["invalid_json"] and second["wrong_name"] == first["wrong_name"]


@pytest.mark.parametrize("student", sorted(EXPECTED_ARCHIVE))
def test_hostile_zip_members_fail_their_student_only(again, student):
    assert again["done"].returncode == 0, again["done"].stderr[-3000:]
    rows = read_rows(again["out"])
    assert sorted(rows) == sorted(again["subset"] + list(EXPECTED_ARCHIVE))
    status, score, reason = EXPECTED_ARCHIVE[student]
    assert (rows[student]["status"], rows[student]["score"]) == (status, "" if score is None else f"{score:g}")
    assert reason in rows[student]["reason"], rows[student]
    assert again["unchanged"]


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


def test_an_interrupted_run_leaves_no_runtime_folder_or_cgroup(course, tmp_path, monkeypatch):
    """Ctrl-C (or any error) in the middle of a run: the jobs not started are not started, and every job's
    runtime folder on /dev/shm and cgroups go, the ones never run included (all are made before the first runs)."""
    from autograder import pipeline, sandbox

    def mine() -> set[str]:
        tag = f"{sandbox.maker_tag()}-"
        places = [(sandbox.scratch_root(), sandbox.SCRATCH_PREFIX)] + [
            (base, sandbox.GROUP_PREFIX) for base, _ in sandbox.cgroup_support().values()]
        return {os.path.join(place, name) for place, prefix in places if place
                for name in os.listdir(place) if name.startswith(prefix + tag)}

    ran = []

    def interrupted(opts, job, sub):
        ran.append(sub.student_id)
        assert os.path.islink(job["dir"] / "runtime") or not sandbox.scratch_root()
        if len(ran) > 1:  # the next job may start before the interruption reaches the main thread
            time.sleep(2)
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "run_job", interrupted)
    submissions = tmp_path / "submissions"
    for name in ("alice", "bob", "carol"):
        shutil.copytree(FIXTURES / "submissions" / "reference", submissions / name)
    before = mine()
    with pytest.raises(KeyboardInterrupt):
        pipeline.grade(pipeline.Options(assignment="mini", submissions=submissions, out=tmp_path / "out", jobs=1,
                                        course=course))
    assert ran[0] == "alice" and "carol" not in ran, ran
    assert mine() == before, mine() - before


def running(pid: int) -> bool:
    try:
        return "(zombie)" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def grading_children(run: int) -> list[int]:
    """The grading processes of a run: children of its multiprocessing fork server."""
    servers = [p for p in descendants(run) if "multiprocessing.forkserver" in cmdline(p)]
    return [p for p in descendants(run) if any(p in descendants(s) for s in servers)]


SLEEPS = 'import time\ntime.sleep(600)\nanswer_q2 = "B"'


@pytest.mark.parametrize("when,how", [("while the template builds", "kill -9"), ("while a submission runs", "kill -9"),
                                      ("while a submission runs", "Ctrl-C")])
def test_a_killed_run_takes_its_grading_processes_and_kernels_with_it(course, tmp_path, when, how):
    """kill -9 of a run (or the OOM killer): every process it started ends with it, not when the notebook or
    a wait ends. Red team and this test, session 7: (1) every child of multiprocessing's fork server holds the
    pipe whose closing tells the fork server its run is gone, so a grading process (tied to the fork server)
    and its kernel outlived the run; (2) a fork server still importing when its run died took pid 1 for its
    run and waited 900 s for a template that never came. Ctrl-C: the run ends the running submissions at
    once (it waited for each to end on its own, up to its time limit) and leaves no runtime folder."""
    from autograder import sandbox

    folder = tmp_path / "submissions" / "sleeper"
    folder.mkdir(parents=True)
    nb = make_fixtures.notebook(make_fixtures.answered({**make_fixtures.REFERENCE, "q2": SLEEPS}))
    (folder / "mini.ipynb").write_text(json.dumps(nb))
    run = subprocess.Popen([sys.executable, "-m", "autograder", "grade", "mini", str(tmp_path / "submissions"),
                            "--out", str(tmp_path / "out"), "--jobs", "1", "--course", str(course),
                            "--cell-timeout", "900"], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           # a background job of a non-interactive shell (CI started with &) ignores SIGINT, and
                           # Python then installs no KeyboardInterrupt handler: give the run a terminal's default
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    tree: list[int] = []
    try:
        if when == "while the template builds":
            started = wait_for(lambda: any("generate_assignment" in cmdline(p) for p in descendants(run.pid)), 120)
            time.sleep(0.5)  # the grading processes' fork server is still importing nbgrader
        else:
            started = wait_for(lambda: grading_children(run.pid), 240)
            time.sleep(8)  # the kernel starts and runs into the sleeping cell
        assert started and run.poll() is None, f"the run got no further than it should ({when})"
        tree = descendants(run.pid)
        tag = f"{sandbox.SCRATCH_PREFIX}{run.pid}."
        assert any(name.startswith(tag) for name in os.listdir(sandbox.scratch_root() or tmp_path)) or \
            when != "while a submission runs" or not sandbox.scratch_root()
        if how == "Ctrl-C":
            run.send_signal(signal.SIGINT)
            run.wait(timeout=60)  # not the cell's 900 s
            assert not any(name.startswith(tag) for name in os.listdir(sandbox.scratch_root() or tmp_path))
        else:
            run.kill()
            run.wait()
        wait_for(lambda: not any(running(p) for p in tree), 30)
        assert not [cmdline(p)[:150] for p in tree if running(p)]
    finally:
        run.kill()
        for p in tree:
            if running(p):
                os.kill(p, signal.SIGKILL)
        sandbox.remove_leftovers()


def test_a_temporary_folder_too_deep_for_the_kernels_sockets_is_refused(course, tmp_path):
    """The kernels' Unix sockets are made under the run's folder in TMPDIR; sun_path holds 107 bytes. A deeper
    TMPDIR failed every kernel with a ZMQError (seen when the folders' names grew by 11 characters, session 7):
    now the run stops at once and says what to do."""
    deep = tmp_path / ("t" * 40) / ("m" * 40)
    deep.mkdir(parents=True)
    (tmp_path / "subs" / "alice").mkdir(parents=True)
    shutil.copy(FIXTURES / "submissions" / "reference" / "mini.ipynb", tmp_path / "subs" / "alice")
    done = run_cli("grade", "mini", str(tmp_path / "subs"), "--out", str(tmp_path / "out"), "--course", str(course),
                   cwd=tmp_path, env={"TMPDIR": str(deep)})
    assert done.returncode != 0 and "set TMPDIR to a shorter folder" in done.stderr, done.stderr[-2000:]
    assert not list(deep.iterdir())  # its own folder removed


def test_the_cell_limit_is_the_courses_execute_timeout(tmp_path):
    """Without --cell-timeout, every cell and every call of a student function gets the course's
    c.Execute.timeout (nbgrader_config.py), not a number of the grader's own."""
    from autograder.pipeline import Options, course_cell_timeout

    (tmp_path / "nbgrader_config.py").write_text("c = get_config()\nc.Execute.timeout = 7\n")
    assert course_cell_timeout(Options(assignment="x", submissions=tmp_path, out=tmp_path, course=tmp_path)) == 7
    assert course_cell_timeout(Options(assignment="x", submissions=tmp_path, out=tmp_path, course=REPO)) == 180


def schema(db: Path) -> tuple[set, list]:
    import sqlite3
    from contextlib import closing
    with closing(sqlite3.connect(db)) as conn:
        return (set(conn.execute("SELECT type, name, sql FROM sqlite_master")),
                conn.execute("SELECT version_num FROM alembic_version").fetchall())


def test_the_template_gradebook_equals_the_one_nbgrader_makes(course, tmp_path, monkeypatch):
    """The template's gradebook starts stamped with the schema version read from nbgrader's migration scripts
    (no ``alembic heads`` subprocess); it must end exactly as a gradebook nbgrader creates and stamps itself."""
    from autograder import pipeline
    from nbgrader.api import Gradebook

    monkeypatch.setenv("PATH", str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"])  # alembic
    with Gradebook(f"sqlite:///{tmp_path / 'nbgrader.db'}"):
        pass
    (tmp_path / "run").mkdir()
    template, _ = pipeline.build_template(pipeline.Options(assignment="mini", submissions=tmp_path,
                                                           out=tmp_path, course=course), tmp_path / "run")
    tables, version = schema(template / "gradebook.db")
    assert (tables, version) == schema(tmp_path / "nbgrader.db") and len(version) == 1


# ----------------------------------------------------------------------------- CSV cells (issue 12, fast)
@pytest.mark.parametrize("cell,written", [
    ("=HYPERLINK(\"http://x\",\"y\")", "'=HYPERLINK(\"http://x\",\"y\")"), ("+1+2", "'+1+2"), ("-2+3", "'-2+3"),
    ("@SUM(A1)", "'@SUM(A1)"), ("\tx", "'\tx"), ("\rx", "'\rx"), ("\uff1d1+1", "'\uff1d1+1"), ("-", "'-"),
    ("-1", "-1"), ("-2.5", "-2.5"), ("-1e-05", "-1e-05"), ("5", "5"), ("", ""), ("a=b", "a=b"),
    ("graded: fine", "graded: fine"), (None, ""), (True, "True")])
def test_neutralise_follows_owasp(cell, written):
    assert neutralise(cell) == written


def test_reports_write_neutralised_cells_and_safe_feedback_names(tmp_path):
    from types import SimpleNamespace

    bad_id = printable('=HYPERLINK("x","y")\n', limit=1000)
    rows = [SimpleNamespace(student_id="alice", status="graded", score=-1.0, reason="@evil", feedback=None,
                            checks=[{"notebook": "mini.ipynb", "check": "=c", "score": -1.0, "max_score": 2,
                                     "passed": False, "judged_by": "judge", "message": "=1+1\nmore"}]),
            SimpleNamespace(student_id=bad_id, status="failed", score=None, reason="-x \udcff", feedback=None,
                            checks=[])]
    write_reports(tmp_path, "mini", rows, 5)
    with open(tmp_path / "grades.csv", newline="", encoding="utf-8") as f:
        grades = list(csv.reader(f))
    assert grades == [["student_id", "assignment", "score", "max_score", "status", "reason", "submitted_at", "due",
                       "seconds_late", "late_penalty", "final_score"],
                      ["alice", "mini", "-1", "5", "graded", "'@evil", "", "", "", "", "-1"],
                      ["'=HYPERLINK(\"x\",\"y\")\\n", "mini", "", "5", "failed", "'-x \\udcff", "", "", "", "", ""]]
    with open(tmp_path / "checks.csv", newline="", encoding="utf-8") as f:
        checks = list(csv.reader(f))
    assert checks[1] == ["alice", "mini", "mini.ipynb", "'=c", "-1", "2", "False", "judge", "'=1+1\nmore"]
    pages = sorted(p.name for p in (tmp_path / "feedback").iterdir())
    assert pages[0] == "alice.html" and pages[1].startswith("invalid-id-") and len(pages) == 2


# ----------------------------------------------------------------------------- output caps (issue 12, fast)
def test_cap_outputs_cuts_text_images_and_keeps_errors_and_verdicts():
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook, new_output

    from autograder.grade_one import marker_text, output_cap_classes

    _, CapOutputs = output_cap_classes()
    answer = new_code_cell("print(...)", outputs=[new_output("stream", name="stdout", text="x" * 3000)])
    image = new_code_cell("plot", outputs=[new_output("display_data", data={"image/png": "A" * 5000,
                                                                            "text/plain": "<Figure>"})])
    error = new_code_cell("raise", outputs=[new_output("error", ename="ValueError", evalue="=" + "y" * 9000,
                                                       traceback=["line"] * 10)])
    test = new_code_cell("assert ...", outputs=[new_output("stream", name="stdout", text="Grader: passed\n")],
                         metadata={"nbgrader": {"grade": True, "grade_id": "t"}})
    nb = new_notebook(cells=[answer, image, error, test])
    cap = CapOutputs()
    cap.cell_bytes, cap.notebook_bytes = 2000, 4200
    nb, _ = cap.preprocess(nb, {})
    texts = [[o.get("text") or o.get("data") or o.get("evalue") for o in c.outputs] for c in nb.cells]
    assert texts[3] == ["Grader: passed\n"]  # graded test cells are served first
    assert texts[0][0] == "x" * 2000 and "output cut: 1000 bytes" in marker_text(nb.cells[0].outputs[1])
    assert texts[1][0] == {"text/plain": "<Figure>"} and "output cut: 5000 bytes" in marker_text(nb.cells[1].outputs[1])
    assert nb.cells[2].outputs[0].output_type == "error" and len(nb.cells[2].outputs[0].evalue) <= 1000
    assert "output cut" in marker_text(nb.cells[2].outputs[-1])
    nbformat.validate(nb)


def test_a_second_cap_pass_keeps_the_first_pass_count_of_what_was_cut():
    """CappedExecute cuts while the kernel runs and adds a marker; CapOutputs then caps the executed notebook,
    and again the feedback page. The later passes fold the marker's counts into theirs: a 2 MB flood must not
    be reported as the hundred-odd bytes of the marker the second pass had to cut."""
    from nbformat.v4 import new_code_cell, new_notebook, new_output

    from autograder.grade_one import OutputBudget, marker_counts, output_cap_classes

    _, CapOutputs = output_cap_classes()
    outputs = [new_output("stream", name="stdout", text="y" * 2000)]
    OutputBudget(cell_bytes=2000).note_cut(outputs, 0, n=1_954_424, dropped=1)  # what CappedExecute leaves
    outputs.append(new_output("stream", name="stderr", text="warning\n"))
    nb = new_notebook(cells=[new_code_cell("flood()", outputs=outputs)])
    cap = CapOutputs()
    cap.cell_bytes = 2000
    for _ in range(2):  # after execution, then on the feedback page
        nb, _ = cap.preprocess(nb, {})
        markers = [marker_counts(o) for o in nb.cells[0].outputs if marker_counts(o) is not None]
        assert len(markers) == 1, nb.cells[0].outputs
        cut, dropped = markers[0]
        assert dropped == 1 and 1_954_424 < cut < 1_954_424 + 100, markers  # the stderr line (and a few bytes) more
    assert marker_counts(new_output("stream", name="stdout", text="\n... (output cut: 12 apples)\n")) is None


def test_a_printed_marker_with_a_huge_count_is_plain_output():
    """A student prints marker text with a 5000-digit count (red team, session 7): before, int() refused it
    (Python's 4300-digit limit), autograde failed and the page lost every output. Now it is not a marker:
    it is output like any other, counted and cut."""
    from nbformat.v4 import new_code_cell, new_notebook, new_output

    from autograder.grade_one import marker_counts, marker_text, output_cap_classes

    fake = ("\n... (output cut: " + "9" * 5000 + " bytes; the grader keeps at most 1 MB of output per cell and 5 MB"
            " per notebook)\n")
    assert marker_counts(new_output("stream", name="stdout", text=fake)) is None
    _, CapOutputs = output_cap_classes()
    cap = CapOutputs()
    cap.cell_bytes = 3000
    nb, _ = cap.preprocess(new_notebook(cells=[new_code_cell("fake()", outputs=[
        new_output("stream", name="stdout", text=fake)])]), {})
    assert marker_counts(nb.cells[0].outputs[-1]) == (len(fake) - 3000, 0), [marker_text(o)[:80] for o in nb.cells[0].outputs]


def test_the_marker_survives_nbgraders_line_limit():
    """nbgrader's LimitOutput (after CapOutputs in autograde) drops stream outputs beyond 1000 lines: a flood
    of short lines lost its marker with them (red team, session 7). The marker is display data, which it keeps."""
    from nbformat.v4 import new_code_cell, new_notebook, new_output
    from nbgrader.preprocessors import LimitOutput

    from autograder.grade_one import marker_counts, output_cap_classes

    _, CapOutputs = output_cap_classes()
    nb = new_notebook(cells=[new_code_cell("flood()", outputs=[new_output("stream", name="stdout", text="x\n" * 1_500_000)])])
    nb, _ = CapOutputs().preprocess(nb, {})
    nb, _ = LimitOutput().preprocess(nb, {})
    markers = [marker_counts(o) for o in nb.cells[0].outputs if marker_counts(o)]
    assert markers == [(3_000_000 - 2**20, 0)], nb.cells[0].outputs[-1]
    assert "Output truncated" in nb.cells[0].outputs[0].text  # LimitOutput did run on the stream


CAPPED_RUN = r"""
import resource, sys
from nbformat.v4 import new_code_cell, new_notebook
from autograder.grade_one import output_cap_classes
CappedExecute, _ = output_cap_classes()
nb = new_notebook(cells=[new_code_cell("print('x' * 200_000_000)"), new_code_cell("print('after')"),
                         new_code_cell("for i in range(5000):\n    print('y' * 1000)")])
nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
CappedExecute(timeout=120, kernel_name="python3", iopub_timeout=1).preprocess(nb, {"metadata": {"path": "."}})
outputs = [[(o.output_type, (o.get("text") or o.get("data", {}).get("text/plain") or "")[-300:]) for o in c.outputs]
           for c in nb.cells]
sizes = [sum(len(o.get("text") or "") for o in c.outputs) for c in nb.cells]
print("RESULT", {"outputs": outputs, "sizes": sizes,
                 "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024})
"""


def test_a_200_mb_line_never_enters_the_grading_process(tmp_path):
    """The kernel prints 200 MB in one line: the grading side (nbgrader's Execute, capped) drops the message
    unread, says so, goes on with the next cells, and cuts a flood of small lines at the cell's cap."""
    done = run_python(CAPPED_RUN, timeout=300, cwd=tmp_path)
    lines = [l for l in done.stdout.splitlines() if l.startswith("RESULT ")]
    assert lines, done.stderr[-3000:]
    import ast
    result = ast.literal_eval(lines[-1][len("RESULT "):])
    first, after, flood = result["outputs"]
    assert len(first) == 1 and "dropped unread" in first[0][1], first
    assert after == [("stream", "after\n")]
    assert "output cut" in flood[-1][1] and result["sizes"][2] < 2**20 + 1000, result["sizes"]
    # the process's own imports take 250-330 MiB (measured in CI runs); the 200 MB line, had it been read, would
    # add at least its 200 MB on top (682 MiB in the pipeline's grading process before the cap)
    assert result["peak_mib"] < 450, result
