"""Grades for the LMS (issue 16): a Canvas gradebook CSV and a Moodle grade-import CSV, as nbgrader export
plugins, from the course gradebook (the judge's scores, manual scores given in formgrader, late penalties):

    nbgrader export --exporter=autograder.lms.CanvasExport --LmsExport.roster=roster.csv --to canvas.csv
    nbgrader export --exporter=autograder.lms.MoodleExport --LmsExport.roster=roster.csv --to moodle.csv

The score is nbgrader export's: max(0, score - late penalty) per assignment, 0 for a student of the gradebook
who did not submit. Student ids are mapped through the roster, a CSV whose first line names its columns:
``student_id`` (the nbgrader id, required) and any of ``name``, ``canvas_id``, ``sis_user_id``,
``sis_login_id``, ``section`` (Canvas), ``email``, ``idnumber``, ``username``, ``first_name``, ``last_name``
(Moodle). A student of the gradebook missing from the roster, a roster line without an id, a student without
any identifier the LMS can match on: each is named on stderr and left out; the export goes on. Every cell goes
through ``autograder.reports.neutralise`` (no cell runs as a formula in a spreadsheet).
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

from nbgrader.api import Gradebook, MissingEntry
from nbgrader.plugins import ExportPlugin
from traitlets import Dict, Unicode

from autograder.reports import fmt, neutralise
from autograder.submissions import Refused, printable, read_regular

MAX_ROSTER_BYTES = 20 * 2**20
ROSTER_COLUMNS = ("student_id", "name", "canvas_id", "sis_user_id", "sis_login_id", "section", "email", "idnumber",
                  "username", "first_name", "last_name")


@dataclass
class Roster:
    people: dict[str, dict[str, str]] = field(default_factory=dict)  # student_id -> the roster's columns
    problems: list[str] = field(default_factory=list)


def read_roster(path: Path) -> Roster:
    """The roster file; an unusable file is the instructor's error (ValueError), a bad line only a message."""
    try:
        text = read_regular(path.parent.resolve(), Path(path.name), limit=MAX_ROSTER_BYTES).decode("utf-8-sig")
    except (Refused, UnicodeDecodeError) as exc:
        raise ValueError(f"roster {path}: {exc}") from None
    lines = csv.reader(io.StringIO(text))
    header = [h.strip().lower() for h in next(lines, [])]
    if "student_id" not in header:
        raise ValueError(f"roster {path}: its first line must name the columns, student_id among them (found "
                         f"{printable(','.join(header), limit=80)!r})")
    roster = Roster()
    for number, values in enumerate(lines, start=2):
        if not any(v.strip() for v in values):
            continue
        entry = {k: v.strip() for k, v in zip(header, values) if k in ROSTER_COLUMNS}
        sid = entry.get("student_id", "")
        if not sid:
            roster.problems.append(f"roster line {number}: no student_id: left out")
        elif sid in roster.people:
            roster.problems.append(f"roster line {number}: {printable(sid)} is listed twice: the first line is used")
        else:
            roster.people[sid] = entry
    return roster


@dataclass
class Scores:
    """Final scores by assignment and student (nbgrader export's rule), and each assignment's maximum."""
    assignments: list[str]
    max_scores: dict[str, float]
    students: list[str]
    final: dict[tuple[str, str], float]


def gradebook_scores(gb: Gradebook, assignments: list[str], students: list[str]) -> Scores:
    chosen = [a for a in gb.assignments if not assignments or a.name in assignments]
    ids = [s.id for s in gb.students if not students or s.id in students]
    final = {}
    for assignment in chosen:
        for sid in ids:
            try:
                sub = gb.find_submission(assignment.name, sid)
            except MissingEntry:
                final[(assignment.name, sid)] = 0.0
                continue
            final[(assignment.name, sid)] = max(0.0, sub.score - (sub.late_submission_penalty or 0.0))
    return Scores([a.name for a in chosen], {a.name: float(a.max_score) for a in chosen}, ids, final)


def write_csv(dest: Path, rows: list[list]) -> None:
    with open(dest, "w", newline="", encoding="utf-8", errors="backslashreplace") as f:
        w = csv.writer(f)
        for row in rows:
            w.writerow([neutralise(c) for c in row])


def roster_rows(scores: Scores, roster: Roster, problems: list[str], ids: tuple, cells: tuple) -> list[list]:
    """A row per gradebook student whom the roster names with at least one of ``ids``: the roster's ``cells``,
    then the student's final score in each assignment. Anyone else is left out, with a line in ``problems``."""
    rows = []
    for sid in scores.students:
        person = roster.people.get(sid)
        if person is None:
            problems.append(f"{printable(sid)} is in the gradebook but not in the roster: left out")
            continue
        if not any(person.get(k) for k in ids):
            problems.append(f"{printable(sid)}: the roster gives no {', '.join(ids[:-1])} or {ids[-1]}: left out")
            continue
        rows.append([*(person.get(k, "") for k in cells), *[fmt(scores.final[(a, sid)]) for a in scores.assignments]])
    return rows


def canvas_rows(scores: Scores, roster: Roster, columns: dict[str, str], problems: list[str]) -> list[list]:
    """Canvas's gradebook import: Student, ID, SIS User ID, SIS Login ID, Section, one column per assignment
    (named ``Title (canvas assignment id)`` to update an existing one: ``CanvasExport.columns``), and the
    ``Points Possible`` line under the header, as Canvas's own gradebook export writes it."""
    heads = [columns.get(a, a) for a in scores.assignments]
    return [["Student", "ID", "SIS User ID", "SIS Login ID", "Section", *heads],
            ["    Points Possible", "", "", "", "", *[fmt(scores.max_scores[a]) for a in scores.assignments]],
            *roster_rows(scores, roster, problems, ("canvas_id", "sis_user_id", "sis_login_id"),
                         ("name", "canvas_id", "sis_user_id", "sis_login_id", "section"))]


def moodle_rows(scores: Scores, roster: Roster, columns: dict[str, str], problems: list[str]) -> list[list]:
    """Moodle's grade import (Grades > Import > CSV file): an identifier column to map from (email address,
    ID number or username), names, one column per grade item (``MoodleExport.columns`` renames them)."""
    heads = [columns.get(a, a) for a in scores.assignments]
    return [["Email address", "ID number", "Username", "First name", "Last name", *heads],
            *roster_rows(scores, roster, problems, ("email", "idnumber", "username"),
                         ("email", "idnumber", "username", "first_name", "last_name"))]


class LmsExport(ExportPlugin):
    """Shared by the Canvas and Moodle exporters: the roster, the scores, the messages."""

    roster = Unicode("roster.csv", help="CSV mapping nbgrader student ids to the LMS's (see autograder/lms.py)"
                     ).tag(config=True)
    columns = Dict({}, help="LMS column title per assignment id (default: the assignment id)").tag(config=True)
    default_name = "lms.csv"

    def rows(self, scores: Scores, roster: Roster, problems: list[str]) -> list[list]:
        raise NotImplementedError

    def export(self, gradebook: Gradebook) -> None:
        roster = read_roster(Path(self.roster))
        scores = gradebook_scores(gradebook, [str(a) for a in self.assignment], [str(s) for s in self.student])
        problems = list(roster.problems)
        rows = self.rows(scores, roster, problems)
        missing = sorted(set(roster.people) - set(scores.students))
        if missing and not self.student:
            problems.append(f"{len(missing)} roster student(s) have no entry in the gradebook, left out (the LMS "
                            f"keeps what it has): {', '.join(printable(m) for m in missing[:20])}")
        dest = Path(self.to or self.default_name)
        write_csv(dest, rows)
        for problem in problems:
            self.log.warning(problem)
        self.log.info("Wrote %d student(s) to %s", len(rows) - self.header_lines, dest)


class CanvasExport(LmsExport):
    """``nbgrader export --exporter=autograder.lms.CanvasExport``: Canvas's gradebook import CSV."""
    default_name = "canvas.csv"
    header_lines = 2

    def rows(self, scores, roster, problems):
        return canvas_rows(scores, roster, self.columns, problems)


class MoodleExport(LmsExport):
    """``nbgrader export --exporter=autograder.lms.MoodleExport``: Moodle's grade-import CSV."""
    default_name = "moodle.csv"
    header_lines = 1

    def rows(self, scores, roster, problems):
        return moodle_rows(scores, roster, self.columns, problems)
