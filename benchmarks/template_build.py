"""Seconds to build the run's template course (``pipeline.build_template``), with the gradebook stamped by the
pipeline (``stamp_gradebook``, as grading does) and without (nbgrader stamps it through ``alembic heads``).

    .venv/bin/python -m benchmarks.template_build [--rounds 2]

On the test suite's fixture assignment (tests/fixtures/course), each way ``--rounds`` times, alternating.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"]  # nbgrader, alembic
    from autograder import pipeline

    stamp = pipeline.stamp_gradebook
    seconds = {"stamped": [], "nbgrader": []}
    with tempfile.TemporaryDirectory(prefix="ftlab-bench-template-") as scratch:
        course = Path(scratch) / "course"
        shutil.copytree(REPO / "tests" / "fixtures" / "course" / "source", course / "source")
        shutil.copy(REPO / "nbgrader_config.py", course)
        opts = pipeline.Options(assignment="mini", submissions=course, out=course, course=course)
        for i in range(args.rounds):
            for way in ("stamped", "nbgrader"):
                pipeline.stamp_gradebook = stamp if way == "stamped" else (lambda db: None)
                root = Path(scratch) / f"{way}-{i}"
                root.mkdir()
                start = time.perf_counter()
                pipeline.build_template(opts, root)
                seconds[way].append(time.perf_counter() - start)
        pipeline.stamp_gradebook = stamp
    print(f"load average {os.getloadavg()[0]:.1f}, {os.cpu_count()} cores")
    for way, values in seconds.items():
        who = "the pipeline (as grading does)" if way == "stamped" else "nbgrader (alembic heads)"
        print(f"template build, gradebook stamped by {who}: " + ", ".join(f"{v:.2f} s" for v in values))
    return 0


if __name__ == "__main__":
    sys.exit(main())
