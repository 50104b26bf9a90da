"""Find each student's notebook in a folder or .zip of submissions, and say clearly why when it cannot.

Accepted layouts (a .zip of either, possibly wrapped in one top folder):
    SUBMISSIONS/<student_id>/<notebook>.ipynb
    SUBMISSIONS/[submitted/]<student_id>/<assignment>/<notebook>.ipynb      (nbgrader's layout)
"""
from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path


class InstructorError(Exception):
    """A problem on the instructor's side (bad assignment, unreadable folder): stops the run."""


@dataclass
class Submission:
    student_id: str
    notebooks: dict[str, Path] = field(default_factory=dict)  # expected notebook name -> student's file
    notes: list[str] = field(default_factory=list)  # graded, but the instructor should know this
    problem: str = ""  # why it cannot be graded ("" = it can)


def _visible(path: Path) -> bool:
    return not path.name.startswith((".", "__MACOSX")) and path.name != ".ipynb_checkpoints"


def unpack(archive: Path, dest: Path) -> Path:
    """Extract a .zip safely (no member may land outside ``dest``)."""
    try:
        with zipfile.ZipFile(archive) as zf:
            for member in zf.infolist():
                target = (dest / member.filename).resolve()
                if not str(target).startswith(str(dest.resolve())):
                    raise InstructorError(f"{archive}: member {member.filename!r} points outside the archive")
            zf.extractall(dest)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InstructorError(f"cannot read submissions archive {archive}: {exc}") from None
    return dest


def students_folder(root: Path, assignment: str) -> Path:
    """The folder whose children are the student folders."""
    if (root / "submitted").is_dir():
        return root / "submitted"
    children = [p for p in root.iterdir() if _visible(p)]
    # a zip of the folder itself: one folder holding only folders, none of them named after the assignment
    while (len(children) == 1 and children[0].is_dir() and not (children[0] / assignment).is_dir()
           and all(p.is_dir() for p in children[0].iterdir() if _visible(p))):
        root = children[0]
        if (root / "submitted").is_dir():
            return root / "submitted"
        children = [p for p in root.iterdir() if _visible(p)]
    return root


def _notebooks_of(folder: Path, assignment: str) -> list[Path]:
    base = folder / assignment if (folder / assignment).is_dir() else folder
    return sorted(p for p in base.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)


def readable_problem(path: Path) -> str:
    """Why this file is not a notebook nbgrader can read, or ""."""
    data = path.read_bytes()
    if not data.strip():
        return f"{path.name} is an empty file"
    try:
        nb = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return f"{path.name} is not valid JSON (damaged file?): {exc}"
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        return f"{path.name} is JSON but not a notebook (no list of cells)"
    if nb.get("nbformat") != 4:
        return f"{path.name} has notebook format {nb.get('nbformat')!r}, expected 4"
    return ""


def find_submissions(submissions: Path, assignment: str, expected: list[str]) -> list[Submission]:
    """One Submission per student folder; ``expected`` are the assignment's notebook file names."""
    try:
        students = sorted(p for p in students_folder(submissions, assignment).iterdir() if p.is_dir() and _visible(p))
    except OSError as exc:
        raise InstructorError(f"cannot read submissions folder {submissions}: {exc.strerror}") from None
    found = []
    for folder in students:
        sub = Submission(folder.name)
        files = _notebooks_of(folder, assignment)
        by_name = {p.name: p for p in files}
        for name in expected:
            if name in by_name:
                sub.notebooks[name] = by_name[name]
        extra = [p.name for p in files if p.name not in expected]
        if len(expected) == 1 and not sub.notebooks and len(files) == 1:
            sub.notebooks[expected[0]] = files[0]
            sub.notes.append(f"graded {files[0].name} as {expected[0]}")
        elif not files:
            sub.problem = f"no notebook submitted (expected {', '.join(expected)})"
        elif not sub.notebooks:
            sub.problem = f"found {len(files)} notebooks ({', '.join(p.name for p in files)}), none named {', '.join(expected)}"
        elif extra:
            sub.notes.append(f"ignored extra notebook(s): {', '.join(extra)}")
        missing = [n for n in expected if n not in sub.notebooks]
        if sub.notebooks and missing:
            sub.notes.append(f"missing notebook(s): {', '.join(missing)} (scored 0)")
        for name, path in sub.notebooks.items():
            problem = readable_problem(path)
            if problem:
                sub.problem = problem
                break
        found.append(sub)
    return found
