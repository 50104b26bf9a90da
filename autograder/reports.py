"""What a grading run writes for people and spreadsheets: grades.csv, checks.csv and the failed-submission
feedback pages. The CSV columns below are the contract with LMS imports: keep them as they are, and add new
ones only at the end (issue 16 appended the late-submission columns).

Every CSV cell is neutralised the way OWASP's "CSV injection" page asks: a cell that starts with ``=``,
``+``, ``-``, ``@``, a tab or a carriage return (or their full-width forms ``＝ ＋ － ＠``) gets a leading
single quote, so that a spreadsheet shows it as text instead of running it as a formula. A cell that is
really a number (``-1``, ``2.5``, ``-1e-05``) is left as it is. Student ids, reasons and check messages
all come from students' files: they go through ``neutralise`` like every other cell.
"""
from __future__ import annotations

import csv
import html
import re
import shutil
from pathlib import Path

from autograder.submissions import feedback_name

GRADES_COLUMNS = ["student_id", "assignment", "score", "max_score", "status", "reason",
                  # issue 16, appended: times in UTC; final_score = max(0, score - late_penalty)
                  "submitted_at", "due", "seconds_late", "late_penalty", "final_score"]
CHECKS_COLUMNS = ["student_id", "assignment", "notebook", "check", "score", "max_score", "passed", "judged_by", "message"]

FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\uff1d", "\uff0b", "\uff0d", "\uff20")
NUMBER = re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")


def fmt(x: float | None) -> str:
    return "" if x is None else f"{x:g}"


def lateness_cells(lateness, score: float | None) -> list[str]:
    """The late-submission columns of one grades.csv row (``autograder.lateness.Lateness`` or None)."""
    if lateness is None:
        return ["", "", "", "", fmt(score)]
    final = None if score is None else max(0.0, score - (lateness.penalty or 0.0))
    times = [t.isoformat(sep=" ") if t is not None else "" for t in (lateness.submitted_at, lateness.due)]
    late = "" if lateness.seconds_late is None else str(int(round(lateness.seconds_late)))
    return times + [late, fmt(lateness.penalty), fmt(final)]


def neutralise(value) -> str:
    """One CSV cell that no spreadsheet runs as a formula (OWASP's rule; real numbers stay numbers)."""
    text = "" if value is None else str(value)
    if text.startswith(FORMULA_START) and not NUMBER.fullmatch(text):
        return "'" + text
    return text


def failed_feedback(student: str, assignment: str, reason: str) -> str:
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(assignment)}: feedback"
            f"</title></head><body><h1>{html.escape(assignment)}: {html.escape(student)}</h1>"
            f"<p>Your submission could not be graded automatically:</p><p><b>{html.escape(reason)}</b></p>"
            f"<p>Please contact your instructor.</p></body></html>\n")


def _writer(path: Path):
    f = open(path, "w", newline="", encoding="utf-8", errors="backslashreplace")
    return f, csv.writer(f)


def write_reports(out: Path, assignment: str, rows: list, max_score: float) -> None:
    """OUT/grades.csv, OUT/checks.csv and OUT/feedback/<student>.html from the rows of a run (objects with
    student_id, status, score, reason, checks and feedback, as ``autograder.pipeline.Row``)."""
    (out / "feedback").mkdir(parents=True, exist_ok=True)
    f, w = _writer(out / "grades.csv")
    with f:
        w.writerow(GRADES_COLUMNS)
        for r in rows:
            w.writerow([neutralise(c) for c in (r.student_id, assignment, fmt(r.score), fmt(max_score), r.status,
                                                r.reason, *lateness_cells(getattr(r, "lateness", None), r.score))])
    f, w = _writer(out / "checks.csv")
    with f:
        w.writerow(CHECKS_COLUMNS)
        for r in rows:
            for c in r.checks:
                w.writerow([neutralise(x) for x in (r.student_id, assignment, c["notebook"], c["check"],
                                                    fmt(c["score"]), fmt(c["max_score"]), c["passed"],
                                                    c["judged_by"], c["message"])])
    for r in rows:
        target = out / "feedback" / feedback_name(r.student_id)
        if r.feedback:
            shutil.copyfile(r.feedback, target)
        else:
            target.write_text(failed_feedback(r.student_id, assignment, r.reason or "no feedback"),
                              encoding="utf-8", errors="backslashreplace")
