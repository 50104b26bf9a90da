"""Issue 16: grading into an nbgrader course, late submissions, LMS export; the term's loop with the real
nbgrader CLI and the real formgrader server.

One small course (the fixture assignment ``mini``, 5 points) goes through: generate_assignment, a first
``--into-course --due`` run (the due date goes into the gradebook) (alice late, bob on time), a manual score for
bob through formgrader's HTTP API, a second run (alice changed, carol new, bob unchanged) while formgrader
still runs, formgrader's Generate Feedback, ``nbgrader release_feedback``, ``nbgrader export`` and the Canvas and
Moodle exporters (Canvas through the ``nbgrader`` command; nbgrader's CSV and Moodle through nbgrader's
ExportApp in this process, to save two interpreter starts). Expected scores come from the fixtures' table (tests/fixtures/expected.json); expected
penalties from the inputs (timestamp, due date, extension) and the plugin's rule (1 point per hour late).
"""
from __future__ import annotations

import csv
import datetime
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import REPO, nbgrader

FIXTURES = REPO / "tests" / "fixtures"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())
DUE = datetime.datetime(2025, 3, 1, 12, 0, 0)
ALICE_LATE = datetime.timedelta(hours=3)
ALICE_EXTENSION = datetime.timedelta(hours=1)
TOKEN = "course-test-token"
LATE_PLUGIN = '''from nbgrader.plugins import BasePlugin


class SubMarks(BasePlugin):
    """nbgrader's documented example: 1 point per hour late."""

    def late_submission_penalty(self, student_id, score, total_seconds_late):
        return round(total_seconds_late / 3600, 0)
'''


def expected_score(fixture: str) -> float:
    return float(EXPECTED[fixture][1])


def hours_late_penalty(late: datetime.timedelta) -> float:
    """The plugin's rule, computed here from the inputs, capped by the score as nbgrader caps it."""
    return float(round(late.total_seconds() / 3600))


def submit(course: Path, student: str, fixture: str, timestamp: str | None, secret: bool = True) -> None:
    """A submission as ``nbgrader collect`` leaves it: submitted/<id>/mini/ with timestamp.txt and the secret."""
    folder = course / "submitted" / student / "mini"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    shutil.copyfile(FIXTURES / "submissions" / fixture / "mini.ipynb", folder / "mini.ipynb")
    if timestamp is not None:
        (folder / "timestamp.txt").write_text(timestamp + "\n")
    if secret:
        (folder / "submission_secret.txt").write_text(f"secret-of-{student}")


def stamp(when: datetime.datetime) -> str:
    return when.strftime("%Y-%m-%d %H:%M:%S.%f") + " UTC"  # nbgrader collect's format


def grade(course: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "autograder", "grade", "mini", str(course / "submitted"),
                           "--out", str(out), "--course", str(course), "--into-course", "--jobs", "2",
                           "--memory", "2G", *extra], capture_output=True, text=True, timeout=600, cwd=course)
    assert done.returncode == 0, done.stderr[:3000] + "\n...\n" + done.stderr[-3000:]
    return done


def rows(path: Path) -> dict[str, dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return {row["student_id"]: row for row in csv.DictReader(f)}


def gradebook(course: Path) -> dict:
    """{student: {"timestamp", "penalty", "grades": {cell: (auto, manual, needs_manual)}, "comments"}}."""
    from nbgrader.api import Gradebook

    found = {}
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        for sub in gb.find_assignment("mini").submissions:
            nb = sub.notebooks[0]
            found[sub.student.id] = {
                "timestamp": sub.timestamp, "penalty": nb.late_submission_penalty, "score": sub.score,
                "grades": {g.name: (g.auto_score, g.manual_score, g.needs_manual_grade) for g in nb.grades},
                "comments": {c.name: c.auto_comment for c in nb.comments}}
    return found


def export_in_process(course: Path, *argv: str) -> subprocess.CompletedProcess:
    """nbgrader export's own app (what ``nbgrader export ARGS`` runs), in this process: the same config and
    plugin loading without one more interpreter start (15-20 s on this loaded machine). Its messages are
    returned as the stderr of a CompletedProcess, like ``nbgrader``'s."""
    import logging

    from nbgrader.apps import ExportApp

    messages: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: messages.append(record.getMessage())
    before = os.getcwd()
    os.chdir(course)
    try:
        app = ExportApp()
        app.initialize(list(argv))
        app.log.addHandler(handler)
        app.start()
    finally:
        os.chdir(before)
        app.log.removeHandler(handler)
    return subprocess.CompletedProcess(["nbgrader", "export", *argv], 0, "", "\n".join(messages))


# ----------------------------------------------------------------------------- formgrader, bounded
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Formgrader:
    """``jupyter server`` on the course with nbgrader's formgrader extension, its own process group, killed
    at the end whatever happens (and by ``timeout`` after 300 s if this process dies first)."""

    def __init__(self, course: Path, log: Path):
        self.port = free_port()
        self.log = open(log, "w")
        root = ["--allow-root"] if os.geteuid() == 0 else []
        self.proc = subprocess.Popen(
            ["timeout", "300", str(Path(sys.executable).parent / "jupyter"), "server", "--no-browser",
             f"--port={self.port}", "--ip=127.0.0.1", f"--IdentityProvider.token={TOKEN}",
             f"--ServerApp.root_dir={course}", *root],
            cwd=course, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self.base = f"http://127.0.0.1:{self.port}"

    def call(self, method: str, path: str, body: dict | None = None, timeout: float = 60):
        request = urllib.request.Request(f"{self.base}{path}", method=method, headers={
            "Authorization": f"token {TOKEN}", "Content-Type": "application/json"},
            data=json.dumps(body).encode() if body is not None else None)
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())

    def wait(self) -> None:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if self.call("GET", "/formgrader/api/status").get("status"):
                    return
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.3)
        raise AssertionError(f"formgrader did not start: {Path(self.log.name).read_text()[-3000:]}")

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=20)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.log.close()

    def grade_of(self, student: str, cell: str) -> dict:
        """A grade as formgrader shows it: the student's notebook submission, then its grades."""
        notebooks = self.call("GET", "/formgrader/api/submitted_notebooks/mini/mini")
        mine = next(n for n in notebooks if n["student"] == student)
        return next(g for g in self.call("GET", f"/formgrader/api/grades?submission_id={mine['id']}")
                    if g["name"] == cell)


class Clock:
    """Seconds per step of the term, written to steps.json beside the course (the suite's cost, by step)."""

    def __init__(self, path: Path):
        self.path, self.start, self.steps = path, time.monotonic(), {}

    def lap(self, name: str) -> None:
        now = time.monotonic()
        self.steps[name] = round(now - self.start, 1)
        self.start = now
        self.path.write_text(json.dumps(self.steps, indent=1))


# ----------------------------------------------------------------------------- the term
@pytest.fixture(scope="module")
def term(tmp_path_factory):
    work = tmp_path_factory.mktemp("term")
    course = work / "course"
    course.mkdir()
    shutil.copy(REPO / "nbgrader_config.py", course)
    shutil.copytree(FIXTURES / "course" / "source", course / "source")
    (course / "late.py").write_text(LATE_PLUGIN)
    with open(course / "nbgrader_config.py", "a") as f:
        f.write(f"\nc.AssignLatePenalties.plugin_class = 'late.SubMarks'\nc.Exchange.root = {str(work / 'exchange')!r}\n")
    (work / "exchange").mkdir()
    os.chmod(work / "exchange", 0o777)
    found = {"course": course, "work": work}
    clock = Clock(work / "steps.json")
    nbgrader("generate_assignment", "mini", "--log-level=ERROR", cwd=course)
    clock.lap('setup')
    (work / "extensions.csv").write_text("student_id,extension\nalice,1h\nbob,three days\n,2h\n")

    # 1. first run: alice (the reference) 3 h late with a 1 h extension, bob (blank) on time
    submit(course, "alice", "reference", stamp(DUE + ALICE_LATE))
    submit(course, "bob", "blank", stamp(DUE - datetime.timedelta(hours=1)))
    found["first"] = grade(course, work / "out1", "--extensions", str(work / "extensions.csv"),
                           "--due", f"{DUE.isoformat(sep=' ')} UTC")  # stored in the gradebook for the next runs
    clock.lap('first run')
    found["after_first"] = gradebook(course)

    # 2. formgrader: bob gets 2 points by hand for correct_add; 3. second run while formgrader runs:
    #    alice changed (another correct style), carol new (edited test cell, a malformed timestamp.txt, no secret)
    server = Formgrader(course, work / "formgrader.log")
    try:
        server.wait()
        grade_id = server.grade_of("bob", "correct_add")["id"]
        clock.lap('formgrader start')
        found["put"] = server.call("PUT", f"/formgrader/api/grade/{grade_id}", {"manual_score": 2})
        submit(course, "alice", "other_style", stamp(DUE + ALICE_LATE))
        submit(course, "carol", "edited_test", "next Tuesday-ish", secret=False)
        found["second"] = grade(course, work / "out2", "--extensions", str(work / "extensions.csv"))
        found["formgrader_bob"] = server.grade_of("bob", "correct_add")
        found["formgrader_carol"] = server.grade_of("carol", "correct_add")
        clock.lap("override, second run")
        # 4. formgrader's "Generate Feedback" button (nbgrader generate_feedback, in the server)
        found["feedback"] = server.call("POST", "/formgrader/api/assignment/mini/generate_feedback", timeout=280)
    finally:
        server.stop()
    clock.lap("generate_feedback in formgrader, formgrader stop")
    found["after_second"] = gradebook(course)

    # 5. the instructor's nbgrader commands, unchanged
    found["release"] = nbgrader("release_feedback", "mini", "--CourseDirectory.student_id_exclude=carol", cwd=course)
    clock.lap('release_feedback')
    export_in_process(course, "--to", str(work / "export.csv"))
    clock.lap('export')
    (work / "roster.csv").write_text(
        "student_id,name,canvas_id,sis_user_id,email,idnumber\n"
        "alice,\"=HYPERLINK(\"\"http://x\"\",\"\"y\"\")\",101,S-1,alice@uni.example,A1\n"
        "bob,\"Doe, Bob\",102,S-2,,B2\n"
        ",no id here,103,,,\n"
        "erin,Erin,104,S-4,erin@uni.example,E4\n")
    found["canvas"] = nbgrader("export", "--exporter=autograder.lms.CanvasExport",
                               f"--LmsExport.roster={work / 'roster.csv'}", "--to", str(work / "canvas.csv"), cwd=course)
    found["moodle"] = export_in_process(course, "--exporter=autograder.lms.MoodleExport",
                                        f"--LmsExport.roster={work / 'roster.csv'}", "--to", str(work / "moodle.csv"))
    clock.lap("lms exports")
    return found


def test_grades_csv_keeps_its_columns_and_gains_lateness(term):
    from autograder.reports import GRADES_COLUMNS

    with open(term["work"] / "out1" / "grades.csv", newline="") as f:
        header = next(csv.reader(f))
    old = ["student_id", "assignment", "score", "max_score", "status", "reason"]
    assert header[:len(old)] == old and header == GRADES_COLUMNS
    assert header[len(old):] == ["submitted_at", "due", "seconds_late", "late_penalty", "final_score"]
    first = rows(term["work"] / "out1" / "grades.csv")
    late = ALICE_LATE - ALICE_EXTENSION
    alice, bob = first["alice"], first["bob"]
    assert float(alice["score"]) == expected_score("reference")
    assert int(alice["seconds_late"]) == late.total_seconds()
    assert float(alice["late_penalty"]) == hours_late_penalty(late)
    assert float(alice["final_score"]) == expected_score("reference") - hours_late_penalty(late)
    assert alice["due"].startswith(str(DUE + ALICE_EXTENSION)) and alice["submitted_at"].startswith(str(DUE + ALICE_LATE))
    assert (float(bob["score"]), bob["seconds_late"], float(bob["late_penalty"])) == (expected_score("blank"), "0", 0)


def test_bad_extension_lines_and_timestamps_are_named_and_the_batch_goes_on(term):
    stderr = term["first"].stderr
    assert "extensions file extensions.csv, line 3: 'three days' is not a duration" in stderr, stderr[-2000:]
    assert "line 4: no student_id" in stderr
    carol = rows(term["work"] / "out2" / "grades.csv")["carol"]
    assert carol["status"] == "graded" and float(carol["score"]) == expected_score("edited_test")
    assert "timestamp.txt not used" in carol["reason"] and "next Tuesday-ish" in carol["reason"], carol
    assert carol["seconds_late"] == "" and carol["late_penalty"] == ""


def test_the_course_gradebook_holds_what_nbgrader_autograde_would(term):
    book = term["after_first"]
    assert sorted(book) == ["alice", "bob"]
    alice, bob = book["alice"], book["bob"]
    assert alice["timestamp"] == DUE + ALICE_LATE
    assert alice["score"] == expected_score("reference") and bob["score"] == expected_score("blank")
    assert alice["penalty"] == hours_late_penalty(ALICE_LATE - ALICE_EXTENSION) and not bob["penalty"]
    assert all(needs is False and manual is None for _, manual, needs in alice["grades"].values())
    # nbgrader's SaveAutoGrades rule: an answer cell left as released gets the comment "No response."
    assert set(bob["comments"].values()) == {"No response."} and set(alice["comments"].values()) == {None}
    course = term["course"]
    autograded = (course / "autograded" / "alice" / "mini" / "mini.ipynb").read_text()
    assert "Grader: passed" in autograded
    assert sorted(p.name for p in (course / "autograded" / "alice" / "mini").iterdir()) == \
        ["mini.ipynb", "submission_secret.txt", "timestamp.txt"]
    page = (term["work"] / "out1" / "feedback" / "alice.html").read_text()
    assert f"Late submission penalty (Score: -{hours_late_penalty(ALICE_LATE - ALICE_EXTENSION)})" in page


def test_a_formgrader_override_sticks_through_a_regrade(term):
    assert term["put"]["manual_score"] == 2
    bob = term["after_second"]["bob"]
    assert bob["grades"]["correct_add"][1] == 2 and bob["score"] == expected_score("blank") + 2
    assert term["formgrader_bob"]["manual_score"] == 2
    assert term["formgrader_carol"]["auto_score"] is not None  # formgrader sees the new student's grades
    with open(term["work"] / "export.csv", newline="") as f:
        exported = {row["student_id"]: row for row in csv.DictReader(f)}
    assert float(exported["bob"]["raw_score"]) == expected_score("blank") + 2


def test_only_new_or_changed_submissions_are_regraded(term):
    stderr = term["second"].stderr
    graded_now = sorted(line.split("] ")[1].split(":")[0] for line in stderr.splitlines() if line.startswith("["))
    assert graded_now == ["alice", "carol"], stderr[-2000:]
    second = rows(term["work"] / "out2" / "grades.csv")
    assert "not regraded" in second["bob"]["reason"] and "not regraded" not in second["alice"]["reason"]
    assert float(second["alice"]["score"]) == expected_score("other_style")
    assert float(second["alice"]["late_penalty"]) == hours_late_penalty(ALICE_LATE - ALICE_EXTENSION)
    assert "cannot deliver theirs" in stderr and "student_id_exclude=carol" in stderr


def test_release_feedback_delivers_through_the_exchange(term):
    from nbgrader.utils import notebook_hash

    assert term["feedback"]["success"], term["feedback"]
    assert term["release"].returncode == 0
    outbound = term["work"] / "exchange" / "fine-tuning-lab" / "feedback"
    for student in ("alice", "bob"):
        page = outbound / f"{notebook_hash(secret=f'secret-of-{student}', notebook_id='mini')}.html"
        assert page.is_file(), sorted(p.name for p in outbound.iterdir())
    bob = (outbound / f"{notebook_hash(secret='secret-of-bob', notebook_id='mini')}.html").read_text()
    assert f"mini (Score: {expected_score('blank') + 2} / 5.0)" in bob  # the manual score, regenerated


def test_lms_exports_map_ids_and_match_nbgrader_export(term):
    with open(term["work"] / "export.csv", newline="") as f:
        final = {row["student_id"]: float(row["score"]) for row in csv.DictReader(f)}
    with open(term["work"] / "canvas.csv", newline="", encoding="utf-8") as f:
        canvas = list(csv.reader(f))
    assert canvas[0] == ["Student", "ID", "SIS User ID", "SIS Login ID", "Section", "mini"]
    assert canvas[1][0].strip() == "Points Possible" and canvas[1][-1] == "5"
    by_id = {row[1]: row for row in canvas[2:]}
    assert sorted(by_id) == ["101", "102"]
    assert float(by_id["101"][-1]) == final["alice"] and float(by_id["102"][-1]) == final["bob"]
    assert by_id["101"][0].startswith("'=HYPERLINK")  # a formula in the roster is written as text
    with open(term["work"] / "moodle.csv", newline="", encoding="utf-8") as f:
        moodle = list(csv.DictReader(f))
    assert [(m["ID number"], float(m["mini"])) for m in moodle] == [("A1", final["alice"]), ("B2", final["bob"])]
    for done in (term["canvas"], term["moodle"]):
        assert "carol is in the gradebook but not in the roster" in done.stderr
        assert "roster line 4: no student_id" in done.stderr and "erin" in done.stderr


def test_force_needs_into_course(tmp_path):
    done = subprocess.run([sys.executable, "-m", "autograder", "grade", "mini", str(tmp_path), "--out",
                           str(tmp_path / "out"), "--force"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--force only applies with --into-course" in done.stderr


# ----------------------------------------------------------------------------- fast checks of the pieces
@pytest.mark.parametrize("text,minutes", [("90m", 90), ("36h", 36 * 60), ("2d", 2 * 24 * 60), ("1w", 7 * 24 * 60),
                                          ("1d12h", 36 * 60), (" 1.5h ", 90)])
def test_extension_durations(text, minutes):
    from autograder.lateness import parse_duration

    assert parse_duration(text) == datetime.timedelta(minutes=minutes)


@pytest.mark.parametrize("text", ["48", "", "two days", "3x", "=1+1", "-2d"])
def test_junk_durations_are_refused_with_the_rule(text):
    from autograder.lateness import parse_duration

    with pytest.raises(ValueError, match="90m, 36h, 2d, 1w or 1d12h"):
        parse_duration(text)


def test_extensions_file_keeps_good_lines_and_names_bad_ones(tmp_path):
    from autograder.lateness import read_extensions

    path = tmp_path / "ext.csv"
    path.write_text("Student_ID,Extension,Assignment\nalice,2d,quiz\nbob,2d,keras_lesson\ncarol,soon,quiz\n"
                    "alice,1h,quiz\n\n,1h,\n")
    found, problems = read_extensions(path, "quiz")
    assert found == {"alice": datetime.timedelta(hours=1)}
    assert [p.split(": ", 1)[0] for p in problems] == ["extensions file ext.csv, line 4", "extensions file ext.csv, line 5",
                                                     "extensions file ext.csv, line 7"]
    path.write_text("who,when\nalice,2d\n")
    assert read_extensions(path, "quiz")[0] == {} and "must name the columns" in read_extensions(path, "quiz")[1][0]
    link = tmp_path / "link.csv"
    link.symlink_to(path)
    assert read_extensions(link, "quiz")[0] == {} and "symbolic link" in read_extensions(link, "quiz")[1][0]


@pytest.mark.parametrize("content,expected", [
    ("2025-03-01 13:30:00.000000 UTC", datetime.datetime(2025, 3, 1, 13, 30)),
    ("2025-03-01 14:30:00 Europe/Paris", datetime.datetime(2025, 3, 1, 13, 30)),
    ("2025-03-01T13:30:00+00:00", datetime.datetime(2025, 3, 1, 13, 30)),
    ("", "it is empty"), ("=cmd|' /C calc'!A0", "not a date and time"), (b"\xff\xfe", "codec"),
    ("x" * 5000, "limit")])
def test_timestamp_files_as_collect_writes_them_or_a_message(tmp_path, content, expected):
    from autograder.lateness import timestamp_problem_or_time

    folder = tmp_path / "submitted" / "alice" / "quiz"
    folder.mkdir(parents=True)
    (folder / "timestamp.txt").write_bytes(content if isinstance(content, bytes) else content.encode())
    when, problem = timestamp_problem_or_time(tmp_path, "quiz", "alice")
    if isinstance(expected, datetime.datetime):
        assert (when, problem) == (expected, "")
    else:
        assert when is None and expected in problem and "counts as on time" in problem, problem


def test_no_timestamp_is_no_message_and_a_linked_one_is_not_followed(tmp_path):
    from autograder.lateness import timestamp_problem_or_time

    (tmp_path / "alice").mkdir()
    assert timestamp_problem_or_time(tmp_path, "quiz", "alice") == (None, "")
    (tmp_path / "secret.txt").write_text("2025-03-01 13:30:00 UTC")
    (tmp_path / "alice" / "timestamp.txt").symlink_to(tmp_path / "secret.txt")
    when, problem = timestamp_problem_or_time(tmp_path, "quiz", "alice")
    assert when is None and "symbolic link" in problem


def test_penalty_follows_the_courses_nbgrader_setting(tmp_path):
    from autograder.lateness import Rules, assess, penalty_plugin

    (tmp_path / "nbgrader_config.py").write_text("c = get_config()\nc.LateSubmissionPlugin.penalty_method = 'zero'\n")
    rules = Rules(due=DUE, plugin=penalty_plugin(tmp_path), extensions={"bob": datetime.timedelta(days=1)})
    late = assess(rules, "alice", DUE + datetime.timedelta(seconds=1), {"a.ipynb": 4.0, "b.ipynb": 1.5})
    assert (late.seconds_late, late.penalty) == (1.0, 5.5)  # 'zero': the whole score, notebook by notebook
    assert assess(rules, "bob", DUE + datetime.timedelta(hours=23), {"a.ipynb": 4.0}).penalty == 0
    (tmp_path / "late.py").write_text(LATE_PLUGIN.replace("round(total_seconds_late / 3600, 0)", "-3"))
    (tmp_path / "nbgrader_config.py").write_text("c = get_config()\nc.AssignLatePenalties.plugin_class = 'late.SubMarks'\n")
    sys.modules.pop("late", None)
    try:
        rules.plugin = penalty_plugin(tmp_path)
    finally:
        sys.modules.pop("late", None)
    assert type(rules.plugin).__name__ == "SubMarks" and str(tmp_path) not in sys.path
    assert assess(rules, "alice", DUE + datetime.timedelta(hours=5), {"a.ipynb": 4.0}).penalty == 0  # kept >= 0


def test_roster_problems_are_messages_and_cells_are_neutralised(tmp_path):
    from autograder.lms import Scores, canvas_rows, moodle_rows, read_roster

    path = tmp_path / "roster.csv"
    path.write_text("student_id,name,canvas_id,email\nalice,@SUM(A1),11,a@x\nalice,Again,12,\n,Nobody,13,\n"
                    "bob,Bob,,\n")
    roster = read_roster(path)
    assert sorted(roster.people) == ["alice", "bob"] and len(roster.problems) == 2
    scores = Scores(["quiz"], {"quiz": 10.0}, ["alice", "bob", "carol"],
                    {("quiz", "alice"): 7.5, ("quiz", "bob"): 3.0, ("quiz", "carol"): 0.0})
    problems: list[str] = []
    canvas = canvas_rows(scores, roster, {"quiz": "Quiz 1 (123)"}, problems)
    assert canvas[0][-1] == "Quiz 1 (123)" and canvas[2][:2] == ["@SUM(A1)", "11"] and len(canvas) == 3
    assert any("bob: the roster gives no canvas_id" in p for p in problems)
    assert any("carol is in the gradebook but not in the roster" in p for p in problems)
    moodle = moodle_rows(scores, roster, {}, [])
    assert moodle[1][0] == "a@x" and moodle[1][-1] == "7.5" and len(moodle) == 2
    from autograder.lms import write_csv

    write_csv(tmp_path / "out.csv", canvas)
    assert "'@SUM(A1)" in (tmp_path / "out.csv").read_text()
    path.write_text("id,name\n1,x\n")
    with pytest.raises(ValueError, match="student_id"):
        read_roster(path)


def test_what_the_next_run_would_regrade(term, tmp_path):
    """After the term: nothing changed, so nothing would be regraded; --force regrades everyone; one changed
    byte regrades that student only (course_db.plan on the term's course, without grading)."""
    from autograder import course_db
    from autograder.submissions import find_submissions

    course = course_db.open_course(term["course"], "mini", template=term["course"])
    subs = find_submissions(term["course"] / "submitted", "mini", ["mini.ipynb"], copy_to=tmp_path / "a")
    assert sorted(course_db.plan(course, subs, force=False)[0]) == ["alice", "bob", "carol"]
    assert course_db.plan(course, subs, force=True)[0] == {}
    copy = next(s for s in subs if s.student_id == "bob").notebooks["mini.ipynb"]
    copy.write_bytes(copy.read_bytes().replace(b"YOUR CODE HERE", b"YOUR CODE HERE!", 1))
    kept, digests = course_db.plan(course, subs, force=False)
    assert sorted(kept) == ["alice", "carol"] and len(set(digests.values())) == 3
