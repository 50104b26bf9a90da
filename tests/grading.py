"""Build submissions from the student version and grade them with the real nbgrader CLI.

    nb = release_notebook("keras_lesson")                    # what students get
    nb = with_answers(nb, {"freeze_all": "def freeze_all(m): ..."})   # a student's answers, by grade_id
    scores = grade("keras_lesson", {"alice": nb, "bob": other}, tmp_path)
    scores["alice"]["correct_freeze_all"]  -> (score, max_score)
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import nbformat

from conftest import REPO, make_course, nbgrader


def notebook_name(assignment: str) -> str:
    notebooks = sorted((REPO / "source" / assignment).glob("*.ipynb"))
    assert len(notebooks) == 1, f"expected one notebook in source/{assignment}, found {notebooks}"
    return notebooks[0].name


def release_notebook(assignment: str) -> dict:
    return json.loads((REPO / "release" / assignment / notebook_name(assignment)).read_text())


def source_notebook(assignment: str) -> dict:
    return json.loads((REPO / "source" / assignment / notebook_name(assignment)).read_text())


def grade_id(cell: dict) -> str | None:
    return cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")


def with_answers(nb: dict, answers: dict[str, str]) -> dict:
    """A copy of ``nb`` whose cells with these grade ids hold the given code."""
    nb = copy.deepcopy(nb)
    missing = set(answers)
    for cell in nb["cells"]:
        if grade_id(cell) in answers:
            cell["source"] = answers[grade_id(cell)]
            missing.discard(grade_id(cell))
    assert not missing, f"no cells with grade ids {sorted(missing)}"
    return nb


def solutions(assignment: str) -> dict[str, str]:
    """The reference answers: the source notebook's solution cells, by grade id."""
    return {grade_id(c): "".join(c["source"]) if isinstance(c["source"], list) else c["source"]
            for c in source_notebook(assignment)["cells"]
            if c.get("metadata", {}).get("nbgrader", {}).get("solution")}


def grade(assignment: str, submissions: dict[str, dict | bytes], workdir: Path) -> dict[str, dict[str, tuple]]:
    """Grade ``{student_id: notebook}`` with nbgrader autograde; returns per-student per-cell scores."""
    from nbgrader.api import Gradebook

    course = make_course(Path(workdir) / "course", [assignment])
    nbgrader("generate_assignment", assignment, "--force", cwd=course)
    name = notebook_name(assignment)
    for student, nb in submissions.items():
        folder = course / "submitted" / student / assignment
        folder.mkdir(parents=True)
        data = nb if isinstance(nb, bytes) else json.dumps(nb).encode()
        (folder / name).write_bytes(data)
    nbgrader("autograde", assignment, "--force", cwd=course, check=False)
    scores = {}
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        for student in submissions:
            try:
                sub = gb.find_submission_notebook(name[:-6], assignment, student)
            except Exception:
                scores[student] = {}
                continue
            scores[student] = {g.name: (g.score, g.max_score) for g in sub.grades}
    return scores


def grade_in_production(assignment: str, submissions: dict[str, dict | bytes], workdir: Path,
                        jobs: int = 2) -> tuple[dict, dict, Path]:
    """Grade ``{student_id: notebook}`` the way instructors do (``python -m autograder grade``: sandboxed
    kernel, the judge's verdicts). Returns ({student: {check: (score, max)}}, {student: {check: message}},
    the output folder)."""
    import csv
    import subprocess
    import sys

    folder = Path(workdir) / "submissions"
    name = notebook_name(assignment)
    for student, nb in submissions.items():
        (folder / student).mkdir(parents=True)
        (folder / student / name).write_bytes(nb if isinstance(nb, bytes) else json.dumps(nb).encode())
    out = Path(workdir) / "out"
    done = subprocess.run([sys.executable, "-m", "autograder", "grade", assignment, str(folder), "--out", str(out),
                           "--jobs", str(jobs)], capture_output=True, text=True, timeout=1800, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    scores: dict = {s: {} for s in submissions}
    messages: dict = {s: {} for s in submissions}
    with open(out / "checks.csv", newline="") as f:
        for row in csv.DictReader(f):
            scores[row["student_id"]][row["check"]] = (float(row["score"]), float(row["max_score"]))
            messages[row["student_id"]][row["check"]] = row["message"]
    return scores, messages, out
