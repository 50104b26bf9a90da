"""Command line: ``python -m autograder grade ASSIGNMENT SUBMISSIONS --out OUT [--jobs N | --cluster ADDRESS]``."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from autograder import sandbox
from autograder.pipeline import REPO, Options, grade
from autograder.submissions import InstructorError


def parse_size(text: str) -> int:
    units = {"k": 2**10, "m": 2**20, "g": 2**30}
    text = text.strip().lower().rstrip("b")
    return int(float(text[:-1]) * units[text[-1]]) if text and text[-1] in units else int(text)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m autograder", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("grade", help="grade a folder or .zip of submissions")
    g.add_argument("assignment", help="assignment id (a folder under source/)")
    g.add_argument("submissions", type=Path, help="folder or .zip: <student>/<nb>.ipynb or submitted/<student>/<assignment>/")
    g.add_argument("--out", type=Path, required=True, help="output folder (grades.csv, checks.csv, feedback/, run.json)")
    g.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="submissions graded at once (default: cores)")
    g.add_argument("--course", type=Path, default=REPO, help="nbgrader course root (default: this repository)")
    g.add_argument("--cell-timeout", type=int, default=None, help="seconds per cell (default: the course's Execute.timeout)")
    g.add_argument("--timeout", type=int, default=1800, help="seconds per submission, everything included (default 1800)")
    g.add_argument("--memory", type=parse_size, default=sandbox.DEFAULT_MEMORY,
                   help="address-space limit of the student's kernel, e.g. 4G (default 8G)")
    g.add_argument("--unprotected", action="store_true",
                   help="BENCHMARK ONLY: no sandbox and kernel-reported verdicts (the plain nbgrader trust model)")
    g.add_argument("--keep-temp", action="store_true", help="keep the per-submission courses (for debugging)")
    c = g.add_argument_group("nbgrader course and late submissions (issue 16)")
    c.add_argument("--into-course", action="store_true",
                   help="also record the grades in the course's gradebook.db, autograded/ and feedback/ (formgrader, "
                        "nbgrader export, release_feedback); regrades only new or changed submissions")
    c.add_argument("--force", action="store_true", help="with --into-course: regrade unchanged submissions too")
    c.add_argument("--due", default=None, help="due date, e.g. '2025-03-01 17:00:00 Europe/Paris' (default: the "
                                               "course gradebook's; with --into-course it is stored there)")
    c.add_argument("--extensions", type=Path, default=None,
                   help="CSV with columns student_id,extension[,assignment]; extension like 36h, 2d, 1d12h")
    g.add_argument("--cluster", metavar="ADDRESS", default=None,
                   help="grade on the dask workers of this running scheduler, e.g. tcp://10.0.0.5:8786 (--jobs is "
                        "then ignored: each worker grades as many submissions at once as it has threads)")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    opts = Options(assignment=args.assignment, submissions=args.submissions, out=args.out, jobs=args.jobs,
                   course=args.course.resolve(), cell_timeout=args.cell_timeout, submission_timeout=args.timeout,
                   memory_bytes=args.memory, protected=not args.unprotected, keep_temp=args.keep_temp,
                   into_course=args.into_course, force=args.force, due=args.due, extensions=args.extensions,
                   cluster=args.cluster)
    if args.force and not args.into_course:
        print("error: --force only applies with --into-course", file=sys.stderr)
        return 2
    if args.into_course and args.cluster:
        print("error: --into-course records into this machine's course: grade without --cluster", file=sys.stderr)
        return 2
    try:
        return grade(opts)
    except InstructorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
