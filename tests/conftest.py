"""Shared test helpers.

Never import tensorflow (or course.keras_tools) in this pytest process: tests that need a framework
run it in a child process (``run_python``), because ``import tensorflow`` then ``import torchvision``
in one process crashes on some machines and pytest collects every test module into one process.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# Deterministic and offline by default: the course backbone, not whatever ImageNet file a machine has.
os.environ.setdefault("FTLAB_WEIGHTS", "course")
os.environ["PATH"] = f"{BIN}{os.pathsep}{os.environ['PATH']}"  # nbgrader calls alembic/jupyter from PATH


def run_python(code: str, timeout: float = 600, env: dict | None = None, cwd: Path | None = None):
    """Run ``code`` in a fresh interpreter of this environment; returns the CompletedProcess."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd or REPO, env={**os.environ, **(env or {})})


def nbgrader(*args: str, cwd: Path, timeout: float = 900, check: bool = True):
    """Run the real nbgrader CLI in course folder ``cwd``."""
    result = subprocess.run([str(BIN / "nbgrader"), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"nbgrader {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def make_course(dest: Path, assignments: list[str] | None = None) -> Path:
    """A throw-away nbgrader course: the repo's config and the chosen ``source/`` assignments."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "nbgrader_config.py", dest)
    for name in assignments or [p.name for p in (REPO / "source").iterdir() if p.is_dir()]:
        shutil.copytree(REPO / "source" / name, dest / "source" / name,
                        ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    return dest


def fixture_course(root: Path) -> Path:
    """A course for the pipeline tests: the repo's config and the small fixture assignment (tests/fixtures/course)."""
    shutil.copy(REPO / "nbgrader_config.py", root)
    shutil.copytree(REPO / "tests" / "fixtures" / "course" / "source", root / "source")
    return root


@pytest.fixture
def course_dir(tmp_path):
    """An empty throw-away course folder with the repo's nbgrader config (add assignments with make_course)."""
    return make_course(tmp_path / "course", assignments=[])


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc, as the host sees them)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        parents[int(entry.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        children = [p for p, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def wait_for(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return condition()
