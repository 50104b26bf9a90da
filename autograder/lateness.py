"""Late submissions (issue 16): when each submission came in, how late that is, and the penalty.

Inputs, all the instructor's except the first:
- ``timestamp.txt`` beside the student's notebooks, as ``nbgrader collect`` writes it (read like a notebook:
  a regular file, never followed, at most MAX_TIMESTAMP_BYTES; parsed with nbgrader's own ``parse_utc``);
- the assignment's due date: ``--due``, else the course gradebook's (``nbgrader db assignment add
  ASSIGNMENT --duedate=...`` or formgrader's Manage Assignments);
- ``--extensions FILE``: a CSV with the columns ``student_id,extension`` (and optionally ``assignment``),
  an extension being a duration such as ``90m``, ``36h``, ``2d``, ``1w`` or ``1d12h``;
- the course's late-submission plugin, as nbgrader itself configures it in nbgrader_config.py:
  ``c.LateSubmissionPlugin.penalty_method = 'zero'`` or ``c.AssignLatePenalties.plugin_class = 'late.SubMarks'``.

The penalty is nbgrader's: per notebook, the plugin's ``late_submission_penalty(student, notebook score,
seconds late)``, kept between 0 and the notebook's score (AssignLatePenalties); the submission's penalty is
their sum. Bad input never stops the batch: a malformed timestamp.txt, a junk line in the extensions file
give a message (in the row's reason, or on stderr for the file) and that input is left out.
"""
from __future__ import annotations

import csv
import datetime
import io
import re
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from autograder.submissions import InstructorError, Refused, _is_real_dir, printable, read_regular, students_folder

MAX_TIMESTAMP_BYTES = 1000
MAX_EXTENSIONS_BYTES = 5 * 2**20
DURATION = re.compile(r"\s*(?:(\d+(?:\.\d+)?)\s*([wdhm])\s*)+\s*", re.IGNORECASE)
DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([wdhm])", re.IGNORECASE)
UNIT_MINUTES = {"m": 1, "h": 60, "d": 24 * 60, "w": 7 * 24 * 60}


@dataclass
class Lateness:
    """What a grades.csv row says about time: all empty when nothing is known."""
    submitted_at: datetime.datetime | None = None  # UTC, naive (as nbgrader stores it)
    due: datetime.datetime | None = None  # the student's own due date: the assignment's plus any extension
    extension: datetime.timedelta | None = None
    seconds_late: float | None = None
    penalty: float | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class Rules:
    """The run's lateness settings: due date, extensions, the penalty plugin (None: no penalty)."""
    due: datetime.datetime | None = None
    extensions: dict[str, datetime.timedelta] = field(default_factory=dict)
    plugin: object | None = None
    problems: list[str] = field(default_factory=list)  # about the instructor's files, printed once


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- parsing
def parse_time(text: str) -> datetime.datetime:
    """A time as nbgrader reads it (``2025-03-01 17:00:00.000000 America/New_York``, ISO 8601, ...), in UTC.
    Raises ValueError with the text when it is not a time."""
    from nbgrader.utils import parse_utc

    cleaned = text.strip()
    if not cleaned:
        raise ValueError("it is empty")
    try:
        return parse_utc(cleaned)
    except (ValueError, OverflowError, TypeError) as exc:
        raise ValueError(f"{printable(cleaned, limit=80)!s} is not a date and time ({type(exc).__name__})") from None


def parse_duration(text: str) -> datetime.timedelta:
    """``90m``, ``36h``, ``2d``, ``1w``, ``1d12h`` -> timedelta; ValueError otherwise (a bare number is refused:
    hours or days?)."""
    if not DURATION.fullmatch(text or ""):
        raise ValueError(f"{printable(text or '', limit=40)!r} is not a duration (write it as 90m, 36h, 2d, 1w or 1d12h)")
    minutes = sum(float(n) * UNIT_MINUTES[u.lower()] for n, u in DURATION_PART.findall(text))
    return datetime.timedelta(minutes=minutes)


def read_extensions(path: Path, assignment: str) -> tuple[dict[str, datetime.timedelta], list[str]]:
    """{student_id: extension} for this assignment from the extensions CSV, and a message per line left out."""
    try:
        data = read_regular(path.parent.resolve(), Path(path.name), limit=MAX_EXTENSIONS_BYTES)
        text = data.decode("utf-8-sig")
    except (Refused, UnicodeDecodeError) as exc:
        return {}, [f"extensions file {path}: not used ({exc})"]
    rows = csv.reader(io.StringIO(text))
    header = [h.strip().lower() for h in next(rows, [])]
    if "student_id" not in header or "extension" not in header:
        return {}, [f"extensions file {path}: not used (its first line must name the columns student_id and "
                    f"extension, and may name assignment; found {printable(','.join(header), limit=80)!r})"]
    found, problems = {}, []
    for number, values in enumerate(rows, start=2):
        if not any(v.strip() for v in values):
            continue
        entry = dict(zip(header, (v.strip() for v in values)))
        where = f"extensions file {path.name}, line {number}"
        if entry.get("assignment") and entry["assignment"] != assignment:
            continue
        student = entry.get("student_id", "")
        if not student:
            problems.append(f"{where}: no student_id: line left out")
            continue
        try:
            extension = parse_duration(entry.get("extension", ""))
        except ValueError as exc:
            problems.append(f"{where}: {exc}: line left out")
            continue
        if student in found:
            problems.append(f"{where}: a second extension for {printable(student)}: this one is used")
        found[student] = extension
    return found, problems


def timestamp_problem_or_time(folder: Path, assignment: str, student_id: str) -> tuple[datetime.datetime | None, str]:
    """The time in the student's timestamp.txt (UTC), or None and why not ("" when there is none at all)."""
    try:
        top = students_folder(folder, assignment)
    except Exception:  # noqa: BLE001 - the folder was read already; nothing more to learn
        return None, ""
    student = top / student_id
    base = student / assignment if _is_real_dir(student / assignment) else student
    if not (base / "timestamp.txt").exists() and not (base / "timestamp.txt").is_symlink():
        return None, ""
    try:
        data = read_regular(folder, (base / "timestamp.txt").relative_to(folder), limit=MAX_TIMESTAMP_BYTES)
        return parse_time(data.decode("utf-8")), ""
    except (Refused, UnicodeDecodeError, ValueError) as exc:
        return None, f"timestamp.txt not used ({exc}): the submission counts as on time"


# ----------------------------------------------------------------------------- the course's settings
@contextmanager
def _on_path(folder: Path):
    """nbgrader imports a plugin such as ``late.SubMarks`` from the course root (its working folder)."""
    sys.path.insert(0, str(folder))
    try:
        yield
    finally:
        try:
            sys.path.remove(str(folder))
        except ValueError:
            pass


def penalty_plugin(course: Path):
    """The course's late-submission plugin, configured as nbgrader configures it (AssignLatePenalties'
    plugin_class, LateSubmissionPlugin's penalty_method), from the course's nbgrader_config.py."""
    from nbgrader.preprocessors import AssignLatePenalties
    from traitlets.config.loader import PyFileConfigLoader

    with _on_path(course):
        config = PyFileConfigLoader("nbgrader_config.py", path=str(course)).load_config()
        step = AssignLatePenalties(config=config)
        step.init_plugin()
        step.plugin_inst.log = step.log
        return step.plugin_inst


def gradebook_due(course: Path, assignment: str) -> datetime.datetime | None:
    """The assignment's due date in the course gradebook, if there is one (read only)."""
    db = course / "gradebook.db"
    if not db.is_file():
        return None
    from nbgrader.api import Gradebook, MissingEntry

    try:
        with Gradebook(f"sqlite:///{db}") as gb:
            return gb.find_assignment(assignment).duedate
    except (MissingEntry, Exception):  # noqa: BLE001 - no such assignment or an older gradebook: no due date
        return None


def load_rules(course: Path, assignment: str, due: str | None, extensions: Path | None) -> Rules:
    """The run's rules. An unreadable --due or a plugin nbgrader cannot load stops the run (InstructorError);
    a bad line of the extensions file is named on stderr and left out."""
    try:
        rules = Rules(due=parse_time(due) if due else gradebook_due(course, assignment))
    except ValueError as exc:
        raise InstructorError(f"--due: {exc}") from None
    if extensions is not None:
        rules.extensions, rules.problems = read_extensions(Path(extensions), assignment)
    for problem in rules.problems:
        log(problem)
    try:
        rules.plugin = penalty_plugin(course)
    except Exception as exc:  # noqa: BLE001 - the course's config names a plugin that cannot be loaded
        raise InstructorError(f"the course's late-submission plugin could not be loaded: {type(exc).__name__}: "
                              f"{str(exc)[:200]}") from None
    return rules


# ----------------------------------------------------------------------------- the penalty
def penalty(plugin, student_id: str, notebook_scores: dict[str, float], seconds_late: float) -> float:
    """nbgrader's penalty: per notebook from the plugin, kept within [0, that notebook's score]; summed."""
    if not seconds_late or plugin is None:
        return 0.0
    total = 0.0
    for score in notebook_scores.values():
        value = plugin.late_submission_penalty(student_id, score, seconds_late)
        if value is not None:
            total += min(max(float(value), 0.0), float(score))
    return total


def assess(rules: Rules, student_id: str, submitted_at: datetime.datetime | None,
           notebook_scores: dict[str, float]) -> Lateness:
    """How late one graded submission is, and its penalty under the rules."""
    extension = rules.extensions.get(student_id)
    due = rules.due + extension if rules.due is not None and extension is not None else rules.due
    found = Lateness(submitted_at=submitted_at, due=due, extension=extension)
    if submitted_at is not None and due is not None:
        found.seconds_late = max(0.0, (submitted_at - due).total_seconds())
        found.penalty = penalty(rules.plugin, student_id, notebook_scores, found.seconds_late)
    return found


def notebook_scores(checks: list[dict]) -> dict[str, float]:
    scores: dict[str, float] = {}
    for check in checks:
        scores[check["notebook"]] = scores.get(check["notebook"], 0.0) + float(check["score"] or 0)
    return scores


def assess_rows(rules: Rules, folder: Path | None, assignment: str, rows: list) -> None:
    """Fill each graded row's ``lateness`` (pipeline Rows); why a timestamp.txt could not be used goes into
    ``lateness.notes`` (``add_notes`` puts it into the row's reason). ``folder`` None: submissions from a .zip,
    whose other files are not unpacked: no submission time is known."""
    if folder is None and rules.due is not None:
        log("late submissions: timestamp.txt files are not read from a .zip (only notebooks are unpacked); "
            "give the collected folder to apply the due date")
    for row in rows:
        if row.status != "graded":
            continue
        submitted_at, problem = timestamp_problem_or_time(folder, assignment, row.student_id) if folder else (None, "")
        row.lateness = assess(rules, row.student_id, submitted_at, notebook_scores(row.checks))
        if problem:
            row.lateness.notes.append(problem)


def add_notes(rows: list) -> None:
    for row in rows:
        notes = row.lateness.notes if getattr(row, "lateness", None) is not None else []
        if notes:
            row.reason = "; ".join([row.reason] + notes if row.reason else notes)
