"""Warm nbgrader up once, in the fork server the grading processes are forked from (a preload module).

The pipeline's grading processes are forked from a ``multiprocessing`` fork server that imports nbgrader
once (``grade_one.PRELOAD``). Importing is not all: the first autograde and feedback page of a process also
configure SQLAlchemy's mappers, build jsonschema validators and nbconvert's exporters (about 1 s of a
submission's "gradebook" step, measured: a process's first no-execute autograde 1.46 s, the next ones 0.5 s).
When ``FTLAB_WARM_COURSE`` names the run's template course, importing this module records a throw-away
submission of the *released* notebooks (no kernel, nothing executed: ``execute=False``) and renders its
feedback page in a private copy, so every forked grading process starts warm. Only instructor files are
read; a failure here only costs the time it would have saved. The pipeline starts this fork server while
nbgrader is still building the template (it appears whole, renamed into place): the warm-up waits for it.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path

WARM_VARIABLE = "FTLAB_WARM_COURSE"
PARENT_VARIABLE = "FTLAB_WARM_PARENT"  # the run's pid: a fork server whose run is gone stops waiting
WARM_STUDENT = "warm-up"


def warm_up(template: Path) -> None:
    from autograder.grade_one import _load_api

    with tempfile.TemporaryDirectory(prefix="ftlab-warm-") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nbgrader's SQLAlchemy warnings about a new student: nothing to report
        course = Path(tmp) / "course"
        shutil.copytree(template, course)
        for release in sorted(p for p in (course / "release").iterdir() if p.is_dir()):
            folder = course / "submitted" / WARM_STUDENT / release.name
            shutil.copytree(release, folder)
            api = _load_api(course, execute=False)
            api.autograde(release.name, WARM_STUDENT, force=True, create=True)
            api.generate_feedback(release.name, WARM_STUDENT, force=True)


def wait_for(template: Path, parent: int, limit: float = 900.0) -> bool:
    """Wait until the template exists; False if its run ended first (its folder or the pipeline, pid
    ``parent``, is gone: a run killed while this process still imported was already gone when it got here)."""
    deadline = time.monotonic() + limit
    while not template.is_dir():
        if not template.parent.is_dir() or os.getppid() != parent or time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def main() -> None:
    path, parent = os.environ.pop(WARM_VARIABLE, None), os.environ.pop(PARENT_VARIABLE, "")
    if path and parent.isdigit() and wait_for(Path(path), int(parent)):
        try:
            warm_up(Path(path))
        except Exception:  # noqa: BLE001 - the fork server must start whatever happens here
            pass


main()
