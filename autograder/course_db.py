"""``--into-course`` (issue 16): the graded submissions go into the instructor's own nbgrader course.

After a run, the course's gradebook, ``autograded/`` and ``feedback/`` hold each graded submission as
``nbgrader autograde`` and ``nbgrader generate_feedback`` would have left them, with the judge's scores:
formgrader shows them, a manual score given there stays, ``nbgrader export`` and ``release_feedback`` work
as usual. Only this process (the pipeline, which never runs student code) writes the course: the gradebook
through nbgrader's Gradebook API, from the verdicts each grading process returned (result.json); the
autograded notebook is the one the grading process made (the judge's verdicts in its test cells); the
feedback page is made here, from the course gradebook (so it shows the late penalty and manual scores).

What was graded is remembered in ``.autograder/<assignment>.json`` at the course root: a hash of the
notebooks' bytes per student. The next run regrades only students whose notebooks changed or who are not
in the gradebook yet (``--force``: everyone); the others keep their grades, and only the late-submission
settings are applied to them again. nbgrader's rule for a regraded cell that already has a manual score
is kept: the manual score stays and the cell is marked "needs manual grade".
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
import stat
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from autograder import lateness as late
from autograder.submissions import InstructorError, Refused, _is_real_dir, read_regular, students_folder

STATE_FOLDER = ".autograder"
EXCHANGE_FILES = ("timestamp.txt", "submission_secret.txt")  # what nbgrader collect leaves; release_feedback reads
MAX_EXCHANGE_FILE_BYTES = 1000


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class Course:
    root: Path
    assignment: str
    db_url: str
    coursedir: object  # nbgrader CourseDirectory
    notebooks: list[str]
    state: dict = field(default_factory=dict)  # student -> what was recorded last (digest, score, checks)

    @property
    def state_file(self) -> Path:
        return self.root / STATE_FOLDER / f"{self.assignment}.json"

    def folder(self, step: str, student: str) -> Path:
        return Path(self.coursedir.format_path(step, student, self.assignment))


# ----------------------------------------------------------------------------- opening the course
def course_directory(root: Path):
    """nbgrader's CourseDirectory for the course, from its nbgrader_config.py (folders, gradebook URL)."""
    from nbgrader.coursedir import CourseDirectory
    from traitlets.config.loader import PyFileConfigLoader

    config = PyFileConfigLoader("nbgrader_config.py", path=str(root)).load_config()
    config.CourseDirectory.root = str(root)
    return CourseDirectory(config=config)


def cells_of(db_url: str, assignment: str) -> dict[str, dict[str, float]] | None:
    """{notebook: {grade cell: max score}} of an assignment in a gradebook, or None when it is not there."""
    from nbgrader.api import Gradebook, MissingEntry

    try:
        with Gradebook(db_url) as gb:
            found = gb.find_assignment(assignment)
            return {nb.name: {c.name: float(c.max_score) for c in nb.grade_cells} for nb in found.notebooks}
    except MissingEntry:
        return None


def open_course(root: Path, assignment: str, template: Path) -> Course:
    """The course to grade into. Its gradebook must know the assignment as this run grades it (the same
    notebooks, test cells and points: ``nbgrader generate_assignment`` ran on the current source)."""
    coursedir = course_directory(root)
    db_url = coursedir.db_url
    expected = cells_of(f"sqlite:///{template / 'gradebook.db'}", assignment)
    if not db_url.startswith("sqlite:///") or not Path(db_url[len("sqlite:///"):]).is_file():
        raise InstructorError(f"--into-course: no gradebook at {db_url}: run `nbgrader generate_assignment "
                              f"{assignment}` in {root} first (make release)")
    found = cells_of(db_url, assignment)
    if found is None:
        raise InstructorError(f"--into-course: assignment {assignment!r} is not in the course gradebook: run "
                              f"`nbgrader generate_assignment {assignment}` in {root} first (make release)")
    if found != expected:
        raise InstructorError(f"--into-course: the course gradebook's {assignment!r} differs from source/"
                              f"{assignment} (test cells or points changed): run `nbgrader generate_assignment "
                              f"{assignment} --force` in {root} first")
    course = Course(root=root, assignment=assignment, db_url=db_url, coursedir=coursedir,
                    notebooks=sorted(f"{name}.ipynb" for name in expected))
    course.state = load_state(course)
    return course


def load_state(course: Course) -> dict:
    try:
        return json.loads(course.state_file.read_text()).get("students", {})
    except FileNotFoundError:
        return {}
    except (ValueError, AttributeError, OSError) as exc:
        log(f"--into-course: {course.state_file} is unreadable ({exc}): every submission is regraded")
        return {}


def save_state(course: Course) -> None:
    course.state_file.parent.mkdir(exist_ok=True)
    tmp = course.state_file.with_suffix(".tmp")
    tmp.write_text(json.dumps({"assignment": course.assignment, "students": course.state}, indent=1) + "\n")
    os.replace(tmp, course.state_file)


# ----------------------------------------------------------------------------- what needs grading
def digest(notebooks: dict[str, Path]) -> str:
    """A hash of the notebooks' bytes (the private copies that would be graded), names included."""
    h = hashlib.sha256()
    for name in sorted(notebooks):
        data = Path(notebooks[name]).read_bytes()
        h.update(f"{name}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()


def in_gradebook(course: Course, student: str) -> bool:
    from nbgrader.api import Gradebook, MissingEntry

    with Gradebook(course.db_url) as gb:
        try:
            gb.find_submission(course.assignment, student)
            return True
        except MissingEntry:
            return False


def unchanged(course: Course, student: str, notebooks_digest: str) -> dict | None:
    """What was recorded for this student last time, when their notebooks are byte for byte the same and the
    course still holds that grading (gradebook entry and autograded notebooks); else None."""
    entry = course.state.get(student)
    if not entry or entry.get("digest") != notebooks_digest or "checks" not in entry:
        return None
    autograded = course.folder(course.coursedir.autograded_directory, student)
    if not any((autograded / name).is_file() for name in course.notebooks) or not in_gradebook(course, student):
        return None
    return entry


def plan(course: Course, subs: list, force: bool) -> tuple[dict, dict[str, str]]:
    """({student: row} of the submissions not regraded, {student: digest} of all readable ones)."""
    kept, digests = {}, {}
    for sub in subs:
        if sub.problem:
            continue
        digests[sub.student_id] = digest(sub.notebooks)
        entry = None if force else unchanged(course, sub.student_id, digests[sub.student_id])
        if entry is not None:
            kept[sub.student_id] = kept_row(course, sub.student_id, entry)
    if kept:
        log(f"--into-course: {len(kept)} submission(s) unchanged since they were graded: kept (--force regrades)")
    return kept, digests


def kept_row(course: Course, student: str, entry: dict):
    """The grades.csv row of a submission that was not regraded: its recorded scores and checks."""
    from autograder.pipeline import Row

    pages = sorted(course.folder(course.coursedir.feedback_directory, student).glob("*.html"))
    note = f"unchanged since {entry['graded_at']}: not regraded (--force regrades)"
    return Row(student, "graded", score=entry["score"], reason="; ".join(x for x in (entry.get("reason"), note) if x),
               checks=entry["checks"], feedback=pages[0] if len(pages) == 1 else None)


# ----------------------------------------------------------------------------- writing the course
def copy_regular_files(source: Path, dest: Path) -> None:
    """Copy the regular files below ``source`` into ``dest`` (replaced), never following a link."""
    if dest.is_symlink() or dest.exists():
        shutil.rmtree(dest) if _is_real_dir(dest) else dest.unlink()
    dest.mkdir(parents=True)
    for top, dirs, files in os.walk(source):
        for name in files:
            path = Path(top) / name
            if stat.S_ISREG(path.lstat().st_mode):
                target = dest / path.relative_to(source)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)


def exchange_files(folder: Path | None, assignment: str, student: str) -> dict[str, bytes]:
    """timestamp.txt and submission_secret.txt from the student's collected folder (small regular files
    only, never followed): ``release_feedback`` needs them beside the feedback. None from a .zip."""
    if folder is None:
        return {}
    try:
        base = students_folder(folder, assignment) / student
    except Exception:  # noqa: BLE001 - read before; nothing to copy
        return {}
    base = base / assignment if _is_real_dir(base / assignment) else base
    found = {}
    for name in EXCHANGE_FILES:
        if (base / name).exists() or (base / name).is_symlink():
            try:
                found[name] = read_regular(folder, (base / name).relative_to(folder), limit=MAX_EXCHANGE_FILE_BYTES)
            except Refused:
                continue
    return found


def record_scores(gb, course: Course, student: str, checks: list[dict], job_db_url: str) -> None:
    """The student's grades and automatic comments in the course gradebook: test cells from the judge's
    verdicts, the other cells (manually graded answers, comments) as nbgrader recorded them in the job."""
    from nbgrader.api import Gradebook

    verdicts = {(c["notebook"][:-len(".ipynb")], c["check"]): float(c["score"]) for c in checks}
    gb.update_or_create_student(student)
    with warnings.catch_warnings():  # nbgrader's own add_submission warns about its autoflush (autograde too)
        warnings.simplefilter("ignore")
        gb.update_or_create_submission(course.assignment, student)
    with Gradebook(job_db_url) as job:
        for name in course.notebooks:
            notebook = name[:-len(".ipynb")]
            mine = gb.find_submission_notebook(notebook, course.assignment, student)
            theirs = job.find_submission_notebook(notebook, course.assignment, student)
            job_grades = {g.name: g for g in theirs.grades}
            job_comments = {c.name: c for c in theirs.comments}
            for grade in mine.grades:
                if (notebook, grade.name) in verdicts:
                    grade.auto_score = verdicts[(notebook, grade.name)]
                else:
                    grade.auto_score = job_grades[grade.name].auto_score if grade.name in job_grades else None
                # nbgrader's SaveAutoGrades: a cell with a manual score, or without an automatic one, is reviewed
                grade.needs_manual_grade = grade.manual_score is not None or grade.auto_score is None
            for comment in mine.comments:
                comment.auto_comment = job_comments[comment.name].auto_comment if comment.name in job_comments else None
    gb.db.commit()


def record_lateness(gb, course: Course, student: str, rules: late.Rules, submitted_at,
                    use_extensions: bool) -> late.Lateness:
    """Timestamp, extension, due date and per-notebook penalties in the gradebook, computed as nbgrader's
    AssignLatePenalties does (from the gradebook's notebook scores, manual scores included)."""
    submission = gb.find_submission(course.assignment, student)
    if submitted_at is not None:
        submission.timestamp = submitted_at
    if use_extensions:
        extension = rules.extensions.get(student)
        submission.extension = extension if extension else None
    found = late.Lateness(submitted_at=submission.timestamp, due=submission.duedate, extension=submission.extension)
    seconds = submission.total_seconds_late if submission.timestamp is not None and submission.duedate else None
    total = None if seconds is None else 0.0
    for notebook in submission.notebooks:
        notebook.late_submission_penalty = None
        if seconds:
            value = late.penalty(rules.plugin, student, {notebook.name: notebook.score}, seconds)
            notebook.late_submission_penalty = value
            total += value
    gb.db.commit()
    found.seconds_late, found.penalty = seconds, total
    return found


def set_due_date(course: Course, due) -> None:
    """``--due`` becomes the assignment's due date in the course gradebook (formgrader and export show it)."""
    from nbgrader.api import Gradebook

    with Gradebook(course.db_url) as gb:
        gb.update_or_create_assignment(course.assignment, duedate=due)


def generate_feedback(course: Course, student: str) -> str:
    """nbgrader's generate_feedback for one student, in this process, with the grader's output caps; ""
    or why it failed. Only converts the autograded notebook to HTML: nothing in it runs."""
    from autograder.grade_one import _load_api

    api = _load_api(course.root, execute=False)
    result = api.generate_feedback(course.assignment, student, force=True)
    return "" if result.get("success") else "feedback could not be generated in the course"


def record_run(course: Course, rows: list, jobs: dict[str, Path], digests: dict[str, str], folder: Path | None,
               rules: late.Rules, due_given: bool, extensions_given: bool) -> None:
    """Write every graded row of a run into the course (regraded ones fully; kept ones: lateness only), set
    each row's lateness to what the gradebook now says, and remember what was graded. A row that cannot be
    recorded says why in its reason; the others go on."""
    if due_given:
        set_due_date(course, rules.due)
    for row in rows:
        if row.status != "graded":
            continue
        job = jobs.get(row.student_id)
        try:
            record_row(course, row, job, folder, rules, extensions_given)
        except Exception as exc:  # noqa: BLE001 - a damaged job folder or gradebook row: this student only
            row.reason = "; ".join(x for x in (row.reason, f"not recorded in the course: {type(exc).__name__}: "
                                                            f"{str(exc)[:200]}") if x)
            continue
        remember(course, row, digests.get(row.student_id) if job is not None else None)
    save_state(course)
    warn_without_secret(course, [r.student_id for r in rows if r.status == "graded"])


def record_row(course: Course, row, job: Path | None, folder: Path | None, rules: late.Rules,
               extensions_given: bool) -> None:
    """One graded row into the course: files and scores when it was graded now (``job``), then lateness; the
    feedback page is made again when either changed."""
    from nbgrader.api import Gradebook

    before = row.lateness
    if job is not None:
        install_files(course, row.student_id, job, exchange_files(folder, course.assignment, row.student_id))
    with Gradebook(course.db_url) as gb:
        if job is not None:
            record_scores(gb, course, row.student_id, row.checks, f"sqlite:///{job / 'gradebook.db'}")
        row.lateness = record_lateness(gb, course, row.student_id, rules, before.submitted_at if before else None,
                                       extensions_given)
    if before is not None:
        row.lateness.notes = before.notes
    if job is not None or course.state.get(row.student_id, {}).get("penalty") != row.lateness.penalty:
        problem = generate_feedback(course, row.student_id)
        if problem:
            row.reason = "; ".join(x for x in (row.reason, problem) if x)
    pages = sorted(course.folder(course.coursedir.feedback_directory, row.student_id).glob("*.html"))
    row.feedback = pages[0] if len(pages) == 1 else row.feedback


def warn_without_secret(course: Course, students: list[str]) -> None:
    """Students whose autograded folder has no submission_secret.txt: release_feedback would stop on them."""
    missing = [s for s in students if not (course.folder(course.coursedir.autograded_directory, s)
                                           / "submission_secret.txt").exists()]
    if missing:
        log(f"--into-course: {len(missing)} submission(s) were not collected through nbgrader's exchange (no "
            f"submission_secret.txt); `nbgrader release_feedback` cannot deliver theirs: run it with "
            f"--CourseDirectory.student_id_exclude={','.join(missing)} and hand them OUT/feedback/<id>.html")


def install_files(course: Course, student: str, job: Path, extra: dict[str, bytes]) -> None:
    """The job's autograded folder (notebooks with the judge's verdicts, the assignment's other files) and the
    student's exchange files become the course's ``autograded/<student>/<assignment>/``."""
    job_dir = course_directory(job)
    source = Path(job_dir.format_path(job_dir.autograded_directory, student, course.assignment))
    dest = course.folder(course.coursedir.autograded_directory, student)
    copy_regular_files(source, dest)
    for name, data in extra.items():
        (dest / name).write_bytes(data)


def remember(course: Course, row, digest_of_notebooks: str | None) -> None:
    """What was recorded for the student: the next run compares the digest and reuses the rest."""
    entry = course.state.get(row.student_id, {})
    if digest_of_notebooks is not None:
        entry = {"digest": digest_of_notebooks, "score": row.score, "reason": row.reason, "checks": row.checks,
                 "graded_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    entry["penalty"] = row.lateness.penalty if row.lateness else None
    course.state[row.student_id] = entry
