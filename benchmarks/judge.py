"""What the judge costs per submission, each way its processes start, and whether it judges right.

    .venv/bin/python -m benchmarks.judge                      # every assignment, once each
    .venv/bin/python -m benchmarks.judge quiz --repeat 3      # one assignment, 3 timed runs per notebook

For each assignment: the student version (release/<assignment>/, or generated into a throw-away course
with the real ``nbgrader generate_assignment`` when release/ lacks it) and that version with the reference
answers filled in are each judged with ``autograder.judge.check_submission``, both ways: fresh interpreters
(the judge and every runner import the frameworks) and forked by a fork server that imported them once
(as the grading pipeline does; the server's own start, once per grading run, is shown apart).
Prints the wall seconds per submission (runners sandboxed when running as root), how many runners (one
per call of a student function) and how many test cells passed: the reference must pass all, the blank
none, both ways alike; then, for the reference, the seconds of each test cell. Wall-clock figures: other
work on the machine changes them.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
ASSIGNMENTS = ["quiz", "pytorch_lesson", "keras_lesson"]


def student_version(assignment: str, scratch: Path) -> tuple[Path, dict]:
    """(source notebook path, student version) for ``assignment``."""
    source = next((REPO / "source" / assignment).glob("*.ipynb"))
    released = REPO / "release" / assignment / source.name
    if not released.exists():
        course = scratch / "course"
        (course / "source").mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / "nbgrader_config.py", course)
        shutil.copytree(source.parent, course / "source" / assignment, dirs_exist_ok=True)
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        subprocess.run([str(Path(sys.executable).parent / "nbgrader"), "generate_assignment", assignment, "--force"],
                       cwd=course, env=env, check=True, capture_output=True)
        released = course / "release" / assignment / source.name
    return source, json.loads(released.read_text())


def with_reference(assignment: str, nb: dict) -> dict:
    from grading import solutions, with_answers
    return with_answers(nb, solutions(assignment))


def timed_checks(source: Path, path: Path, repeat: int, server: str | None) -> tuple[float, dict]:
    from autograder.judge import check_submission
    times, verdicts = [], {}
    for _ in range(repeat):
        start = time.perf_counter()
        verdicts = check_submission(source, path, server=server)
        times.append(time.perf_counter() - start)
    return statistics.median(times), verdicts


def measure(assignment: str, repeat: int) -> list[dict]:
    from autograder import server as fork_server
    from autograder.cells import preload_for
    rows = []
    with tempfile.TemporaryDirectory(prefix="ftlab-bench-judge-") as scratch:
        source, blank = student_version(assignment, Path(scratch))
        server_folder = Path(scratch) / "server"
        server_folder.mkdir(mode=0o700)
        start = time.perf_counter()
        with fork_server.ForkServer.start(preload_for([source]), server_folder) as server:
            server.wait_ready()
            imports = time.perf_counter() - start  # once per grading run
            socket_path = str(server.socket_path)
            for label, nb in [("reference", with_reference(assignment, blank)), ("blank", blank)]:
                path = Path(scratch) / f"{label}.ipynb"
                path.write_text(json.dumps(nb))
                fresh, verdicts = timed_checks(source, path, repeat, None)
                first = imports if label == "reference" else None
                forked, forked_verdicts = timed_checks(source, path, repeat, socket_path)
                passed = sum(v["passed"] for v in verdicts.values())
                expected = len(verdicts) if label == "reference" else 0
                rows.append({"assignment": assignment, "submission": label, "seconds": fresh, "server_seconds": forked,
                             "server_first_seconds": first, "runs": repeat, "passed": passed, "cells": len(verdicts),
                             "right": passed == expected and outcome(forked_verdicts) == outcome(verdicts),
                             "calls": sum(v.get("calls", 0) for v in forked_verdicts.values()),
                             "cell_seconds": {g: v.get("seconds") for g, v in forked_verdicts.items()},
                             "failures": {g: v["message"][:160] for g, v in {**verdicts, **forked_verdicts}.items()
                                          if v["passed"] != (label == "reference")}})
    return rows


def outcome(verdicts: dict) -> dict:
    return {gid: v["passed"] for gid, v in verdicts.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("assignments", nargs="*", default=ASSIGNMENTS)
    parser.add_argument("--repeat", type=int, default=1, help="timed runs per notebook and way (median reported)")
    parser.add_argument("--json", type=Path, help="also write the rows to this file")
    args = parser.parse_args(argv)
    rows = []
    from autograder import sandbox
    print(f"{'assignment':16} {'submission':10} {'fresh interpreters':>18} {'forked by server':>16} {'runners':>7} "
          f"{'passed':>8}  verdicts as expected (both ways)")
    for assignment in args.assignments:
        for row in measure(assignment, args.repeat):
            rows.append(row)
            print(f"{row['assignment']:16} {row['submission']:10} {row['seconds']:16.1f} s {row['server_seconds']:14.1f} s "
                  f"{row['calls']:>7} {row['passed']:>4}/{row['cells']:<3}  {'yes' if row['right'] else 'NO'}", flush=True)
            if row["submission"] == "reference":
                print("    seconds per test cell (forked): " + ", ".join(
                    f"{g} {t:.1f}" for g, t in row["cell_seconds"].items() if t is not None))
            if row["server_first_seconds"] is not None:
                print(f"{'':27} (the server's own start, imports included, once per grading run: "
                      f"{row['server_first_seconds']:.1f} s)")
            for gid, message in row["failures"].items():
                print(f"    {gid}: {message}")
    print(sandbox.summary())
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0 if all(r["right"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
