"""nbval runs the instructor notebooks under source/ (pyproject.toml's testpaths). The lessons' full "Run all"
takes minutes (benchmarks/pytorch_lesson.py and keras_lesson.py measure it, and fail if a cell raises), so
`make test` runs every cell of them in quick mode, as Validate and grading do (course.quick_mode(): a few
training steps, the experiments skipped). FTLAB_NBVAL_FULL=1 runs them in full: `make test-lessons-full`.
"""
from __future__ import annotations

import os

_before: list = []


def quick_for(item) -> bool:
    return item.__class__.__name__ == "IPyNbCell" and os.environ.get("FTLAB_NBVAL_FULL") != "1"


def pytest_runtest_setup(item):
    # the notebook's kernel starts with its first cell and keeps the environment it started with
    if quick_for(item):
        _before.append(os.environ.get("FTLAB_QUICK"))
        os.environ["FTLAB_QUICK"] = "1"


def pytest_runtest_teardown(item, nextitem):
    if quick_for(item) and _before:
        previous = _before.pop()
        if previous is None:
            os.environ.pop("FTLAB_QUICK", None)
        else:
            os.environ["FTLAB_QUICK"] = previous
