"""Grading speed: the course's pipeline (--jobs 1, --jobs 2, protected and not) against plain nbgrader.

    python -m benchmarks.grading                       # 20 copies of the quiz reference solution
    python -m benchmarks.grading --assignment pytorch_lesson --copies 20
    python -m benchmarks.grading --only jobs2,unprotected --rounds 3   # what protection costs (issue 7)

Every configuration grades the same batch: N copies of a realistic submission (the student version with
the reference answers filled in). Plain nbgrader = one ``nbgrader autograde ASSIGNMENT`` call over all N
in a throw-away course (sequential, no sandbox, no judge, no feedback). The pipeline does more per
submission (own course copy, autograde, judge, feedback HTML); ``--unprotected`` is the
pipeline without sandbox and judge, used here only to measure what the protection costs (issue 7 asks
for at most 25%). Prints seconds per submission and the ratios. Wall-clock figures: the machine's load
from other work changes them; run it on a quiet machine.
"""
from __future__ import annotations

import argparse
import copy
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
BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}


OUT_FOLDERS = {"jobs1": "o1", "jobs2": "o2", "unprotected": "o3"}


def throwaway_course(root: Path, assignment: str) -> Path:
    course = root / "course"
    course.mkdir(parents=True)
    shutil.copy(REPO / "nbgrader_config.py", course)
    shutil.copytree(REPO / "source" / assignment, course / "source" / assignment,
                    ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    subprocess.run([str(BIN / "nbgrader"), "generate_assignment", assignment, "--force", "--log-level=ERROR"],
                   cwd=course, check=True, env=ENV)
    return course


def reference_submission(course: Path, assignment: str) -> tuple[str, dict]:
    """The released notebook with each solution cell holding the reference answer (marker lines dropped)."""
    name = sorted(p.name for p in (course / "source" / assignment).glob("*.ipynb"))[0]
    source = json.loads((course / "source" / assignment / name).read_text())
    release = json.loads((course / "release" / assignment / name).read_text())
    answers = {}
    for cell in source["cells"]:
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if meta.get("solution"):
            text = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
            answers[meta["grade_id"]] = "\n".join(l for l in text.splitlines()
                                                  if l.strip() not in ("### BEGIN SOLUTION", "### END SOLUTION"))
    nb = copy.deepcopy(release)
    for cell in nb["cells"]:
        gid = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
        if gid in answers:
            cell["source"] = answers[gid]
    return name, nb


def plain_nbgrader(course: Path, assignment: str, name: str, nb: dict, copies: int) -> float:
    for i in range(copies):
        folder = course / "submitted" / f"student{i:03d}" / assignment
        folder.mkdir(parents=True)
        (folder / name).write_text(json.dumps(nb))
    start = time.perf_counter()
    subprocess.run([str(BIN / "nbgrader"), "autograde", assignment, "--log-level=ERROR"], cwd=course, env=ENV,
                   capture_output=True, check=True)
    return time.perf_counter() - start


def pipeline(course: Path, assignment: str, submissions: Path, out: Path, jobs: int, protected: bool) -> float:
    args = [sys.executable, "-m", "autograder", "grade", assignment, str(submissions), "--out", str(out),
            "--jobs", str(jobs), "--course", str(course)] + ([] if protected else ["--unprotected"])
    start = time.perf_counter()
    done = subprocess.run(args, env=ENV, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"pipeline failed:\n{done.stderr[-2000:]}")
    info = json.loads((out / "run.json").read_text())
    if info["failed"]:
        raise SystemExit(f"{info['failed']} submissions failed: see {out / 'grades.csv'}")
    return seconds


def reference_batch(root: Path, assignment: str, copies: int) -> tuple[Path, str, dict, Path, Path]:
    """Under ``root``: a plain nbgrader course, the reference solution (name, notebook), ``copies`` student
    folders holding it, and a course for the pipeline (config and source only)."""
    course = throwaway_course(root / "plain", assignment)
    name, nb = reference_submission(course, assignment)
    submissions = root / "submissions"
    for i in range(copies):
        (submissions / f"student{i:03d}").mkdir(parents=True)
        (submissions / f"student{i:03d}" / name).write_text(json.dumps(nb))
    pipeline_course = root / "pipeline-course"
    pipeline_course.mkdir()
    shutil.copy(REPO / "nbgrader_config.py", pipeline_course)
    shutil.copytree(REPO / "source" / assignment, pipeline_course / "source" / assignment)
    return course, name, nb, submissions, pipeline_course


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--assignment", default="quiz")
    parser.add_argument("--copies", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=1, help="repeat each configuration, alternating the order")
    parser.add_argument("--only", default="plain,jobs1,jobs2,unprotected",
                        help="comma-separated subset of: plain, jobs1, jobs2, unprotected")
    args = parser.parse_args(argv)
    only = set(args.only.split(","))
    n = args.copies
    with tempfile.TemporaryDirectory(prefix="ftlab-bench-") as tmp:
        root = Path(tmp)
        course, name, nb, submissions, pipeline_course = reference_batch(root, args.assignment, n)
        times, samples = {}, {}
        print(f"grading {n} copies of the {args.assignment} reference solution on {os.cpu_count()} cores"
              f" ({args.rounds} round(s), order alternating, median reported)", flush=True)
        runs = [("plain", "plain nbgrader autograde (one call, sequential)", lambda: plain_nbgrader(course, args.assignment, name, nb, n)),
                ("jobs1", "pipeline --jobs 1 (sandbox + judge + feedback)", lambda: pipeline(pipeline_course, args.assignment, submissions, root / "o1", 1, True)),
                ("jobs2", "pipeline --jobs 2 (sandbox + judge + feedback)", lambda: pipeline(pipeline_course, args.assignment, submissions, root / "o2", 2, True)),
                ("unprotected", "pipeline --jobs 2 --unprotected (feedback only)", lambda: pipeline(pipeline_course, args.assignment, submissions, root / "o3", 2, False))]
        runs = [r for r in runs if r[0] in only]
        for round_ in range(args.rounds):
            for key, label, run in (runs if round_ % 2 == 0 else runs[::-1]):
                shutil.rmtree(root / OUT_FOLDERS.get(key, "none"), ignore_errors=True)
                if key == "plain":
                    shutil.rmtree(course / "submitted", ignore_errors=True)
                    shutil.rmtree(course / "autograded", ignore_errors=True)
                    (course / "gradebook.db").unlink(missing_ok=True)
                    subprocess.run([str(BIN / "nbgrader"), "generate_assignment", args.assignment, "--force",
                                    "--log-level=ERROR"], cwd=course, check=True, env=ENV)
                seconds = run()
                samples.setdefault(key, []).append(seconds)
                print(f"  round {round_ + 1}: {label:52s} {seconds / n:6.2f} s per submission ({seconds:.0f} s total)",
                      flush=True)
        times = {key: statistics.median(values) for key, values in samples.items()}
        for key, label, _ in runs:
            print(f"  median: {label:52s} {times[key] / n:6.2f} s per submission", flush=True)
        for key, out in OUT_FOLDERS.items():
            if key in times:
                steps = json.loads((root / out / "run.json").read_text())["mean_step_seconds"]
                print(f"  {key}: mean seconds per step in a grading child: {steps}")
        if {"jobs1", "jobs2"} <= set(times):
            print(f"speed-up --jobs 2 vs --jobs 1:             {times['jobs1'] / times['jobs2']:.2f}x")
        if {"plain", "jobs2"} <= set(times):
            print(f"speed-up --jobs 2 vs plain nbgrader:       {times['plain'] / times['jobs2']:.2f}x")
        if {"jobs2", "unprotected"} <= set(times):
            print(f"cost of protection (sandbox + judge) at --jobs 2: {100 * (times['jobs2'] / times['unprotected'] - 1):+.0f}% "
                  f"per submission vs the unprotected pipeline")
        with open(os.environ.get("FTLAB_BENCH_JSON", os.devnull), "w") as f:
            json.dump({"assignment": args.assignment, "copies": n, "seconds": times, "samples": samples}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
