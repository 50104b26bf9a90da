"""Grade ONE submission in its own throw-away nbgrader course (run as a child process by the pipeline).

    python -m autograder.grade_one JOB.json      # writes result.json next to JOB.json

The job folder holds a complete course: the instructor's nbgrader_config.py (plus the sandbox kernel and
timeouts appended), source/, release/, a private copy of the gradebook made by ``generate_assignment``, and
``submitted/<student>/<assignment>/<notebook>.ipynb``. Steps: nbgrader autograde -> (issue 7) the
judge's verdicts replace the kernel's -> nbgrader generate_feedback -> result.json.
Nothing here writes outside the job folder; the pipeline merges the results.
"""
from __future__ import annotations

import json
import sys
import threading
import time
import traceback
from pathlib import Path


STARTED = time.perf_counter()


def _load_api(course: Path, execute: bool = True, set_aside_tests: bool = False):
    from nbgrader.apps import NbGraderAPI
    from nbgrader.converters.autograde import Autograde
    from nbgrader.coursedir import CourseDirectory
    from nbgrader.preprocessors import Execute
    from traitlets.config.loader import PyFileConfigLoader

    from autograder.set_aside import PutBackTestCells, SetAsideTestCells

    config = PyFileConfigLoader("nbgrader_config.py", path=str(course)).load_config()
    config.CourseDirectory.root = str(course)
    steps = Autograde.class_traits()["autograde_preprocessors"].default()
    if not execute:  # record the submission (cells restored, gradebook rows) without running it
        config.Autograde.autograde_preprocessors = [p for p in steps if p is not Execute]
    elif set_aside_tests:  # the judge runs the test cells: the kernel runs everything else
        config.Autograde.autograde_preprocessors = [
            q for p in steps for q in ([SetAsideTestCells, Execute, PutBackTestCells] if p is Execute else [p])]
    api = NbGraderAPI(coursedir=CourseDirectory(config=config), config=config)
    api.log_level = "WARN"
    return api


def restore_nbgrader_metadata(submitted: Path, release: Path) -> list[str]:
    """Put back the nbgrader metadata a student changed, in the job's COPY of the submission.

    nbgrader 0.9.6 aborts the whole notebook on some of these (a test cell whose "grade" flag was
    switched off: "Inconsistent checksums"; a duplicated test cell: KeyError 'grade_id' after
    DeduplicateIds, cf. jupyter/nbgrader#1083). Students never need to edit this metadata, so: cells with a
    known grade_id get the released metadata back (the last copy keeps it, as DeduplicateIds would choose;
    earlier copies become plain cells), cells with an unknown grade_id lose their nbgrader metadata (the
    original cell is then restored by OverwriteCells.add_missing_cells), and cell ids are made unique.
    """
    nb = json.loads(submitted.read_text())
    released = {c["metadata"]["nbgrader"]["grade_id"]: c["metadata"]["nbgrader"]
                for c in json.loads(release.read_text())["cells"]
                if c.get("metadata", {}).get("nbgrader", {}).get("grade_id")}
    last = {}
    for i, cell in enumerate(nb["cells"]):
        gid = (cell.get("metadata") or {}).get("nbgrader", {}).get("grade_id")
        if gid:
            last[gid] = i
    changed, ids = [], set()
    for i, cell in enumerate(nb["cells"]):
        meta = cell.setdefault("metadata", {})
        if "nbgrader" in meta:
            gid = meta["nbgrader"].get("grade_id") if isinstance(meta["nbgrader"], dict) else None
            if gid in released and last.get(gid) == i:
                if meta["nbgrader"] != released[gid]:
                    meta["nbgrader"] = dict(released[gid])
                    changed.append(f"restored nbgrader metadata of cell {gid}")
            else:
                del meta["nbgrader"]
                changed.append(f"ignored {'a duplicate of' if gid in released else 'unknown'} cell {gid}")
        if cell.get("id") in ids or "id" in cell and not isinstance(cell["id"], str):
            cell["id"] = f"cell-{i}-renumbered"
        ids.add(cell.get("id"))
    if changed:
        submitted.write_text(json.dumps(nb, indent=1))
    return changed


def test_cell_changes(submitted: Path, release: Path) -> list[str]:
    """What the student did to the released test cells (they are graded from the instructor's copy anyway):
    ``test cell X was deleted: the original was restored`` / ``... was edited: the original was graded``."""
    from autograder.cells import cell_source, is_test_cell, nbgrader_meta

    def tests(path: Path) -> dict[str, str]:
        cells = json.loads(path.read_text()).get("cells", [])
        return {nbgrader_meta(c)["grade_id"]: cell_source(c).strip() for c in cells
                if isinstance(c, dict) and is_test_cell(c)}

    released, mine = tests(release), tests(submitted)
    notes = []
    for gid, text in released.items():
        if gid not in mine:
            notes.append(f"test cell {gid} was deleted: the original was restored")
        elif mine[gid] != text:
            notes.append(f"test cell {gid} was edited: the original was graded")
    return notes


def _cell_messages(autograded: Path) -> dict[str, str]:
    """grade_id -> the error a graded cell ended with in the student's kernel ("" if none)."""
    messages = {}
    if not autograded.exists():
        return messages
    nb = json.loads(autograded.read_text())
    for cell in nb.get("cells", []):
        gid = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
        errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
        if gid and errors:
            messages[gid] = f"{errors[-1].get('ename', '')}: {errors[-1].get('evalue', '')}".strip(": ")[:300]
    return messages


def nbgrader_checks(course: Path, job: dict) -> list[dict]:
    """Per test cell: score, max, passed and message as nbgrader's autograde recorded them."""
    from nbgrader.api import Gradebook

    checks = []
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        for name in job["notebooks"]:
            stem = name[:-len(".ipynb")]
            messages = _cell_messages(course / "autograded" / job["student"] / job["assignment"] / name)
            try:
                grades = gb.find_submission_notebook(stem, job["assignment"], job["student"]).grades
            except Exception:
                grades = []
                expected = gb.find_notebook(stem, job["assignment"]).grade_cells
                checks += [{"notebook": name, "check": c.name, "score": 0.0, "max_score": c.max_score,
                            "passed": False, "judged_by": "nbgrader", "message": "notebook not submitted"}
                           for c in expected if c.cell_type == "code"]
            for g in sorted(grades, key=lambda g: g.name):
                if g.cell_type != "code":
                    continue  # manually graded answers are not part of the autograded score
                score = g.score or 0.0
                checks.append({"notebook": name, "check": g.name, "score": score, "max_score": g.max_score,
                               "passed": score >= g.max_score, "judged_by": "nbgrader",
                               "message": messages.get(g.name, "" if score >= g.max_score else "failed")})
    return checks


class Judging:
    """The judge's verdicts for each notebook, computed in a thread while nbgrader runs the kernel (the two
    never wait for each other: the kernel's outputs are only for the feedback)."""

    def __init__(self, course: Path, job: dict):
        self.course, self.job, self.verdicts, self.error, self.seconds = course, job, {}, None, 0.0
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        from autograder.judge import check_submission

        started = time.perf_counter()
        try:
            for name in self.job["notebooks"]:
                source = self.course / "source" / self.job["assignment"] / name
                submitted = self.course / "submitted" / self.job["student"] / self.job["assignment"] / name
                if submitted.exists():
                    self.verdicts[name] = check_submission(
                        source, submitted, timeout=self.job["judge_timeout"], cell_timeout=self.job["cell_timeout"],
                        sandbox_settings=self.job.get("sandbox"))
        except Exception as exc:  # noqa: BLE001 - reported as this submission's failure
            self.error = f"judge error: {type(exc).__name__}: {exc}"[:300]
        self.seconds = time.perf_counter() - started

    def wait(self) -> dict:
        self.thread.join()
        if self.error:
            raise RuntimeError(self.error)
        return self.verdicts


def apply_verdicts(course: Path, job: dict, checks: list[dict], verdicts_by_notebook: dict) -> list[dict]:
    """The judge's verdicts replace what the student's kernel reported (``autograder.judge``).

    Scores go into this job's gradebook (so feedback shows them) and each test cell's outputs in the
    autograded notebook become what the judge's run of it printed plus the verdict (so feedback shows those).
    """
    from nbgrader.api import Gradebook

    by_key = {(c["notebook"], c["check"]): c for c in checks}
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        for name, verdicts in verdicts_by_notebook.items():
            autograded = course / "autograded" / job["student"] / job["assignment"] / name
            nb = json.loads(autograded.read_text())
            for cell in nb["cells"]:
                gid = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
                check = by_key.get((name, gid))
                if check is None:
                    continue
                verdict = verdicts.get(gid, {"passed": False, "message": "the judge gave no verdict"})
                check.update(passed=bool(verdict["passed"]), judged_by="judge",
                             score=check["max_score"] if verdict["passed"] else 0.0,
                             message=str(verdict.get("message", ""))[:500])
                grade = gb.find_grade(gid, name[:-len(".ipynb")], job["assignment"], job["student"])
                grade.auto_score = check["score"]
                grade.manual_score = None
                text = "Grader: " + ("passed" if check["passed"] else "FAILED")
                if check["message"]:
                    text += f"\n{check['message']}"
                printed = str(verdict.get("output") or "")
                cell["outputs"] = ([{"name": "stdout", "output_type": "stream", "text": printed}] if printed else []) + \
                    [{"name": "stdout", "output_type": "stream", "text": text + "\n"}]
            gb.db.commit()
            autograded.write_text(json.dumps(nb, indent=1))
    return checks


def autograde_error(result: dict) -> str:
    """The most telling line of a failed nbgrader autograde's log (e.g. 'DeadKernelError: Kernel died')."""
    lines = [l.strip() for l in (result.get("log") or "").splitlines() + (result.get("error") or "").splitlines()]
    for marker in ("DeadKernelError", "Kernel died", "CellTimeoutError", "Kernel didn't respond", "Error: "):
        found = [l for l in lines if marker in l and "Please see the" not in l]
        if found:
            return found[-1].split("] ", 1)[-1][:300]
    return (lines[-1:] or ["unknown error"])[0][:300]


def grade(job: dict, timings: dict) -> dict:
    course = Path(job["course"])
    api = _load_api(course, set_aside_tests=job["use_judge"])
    timings["start"] = time.perf_counter()
    notes = []
    for name in job["notebooks"]:
        submitted = course / "submitted" / job["student"] / job["assignment"] / name
        release = course / "release" / job["assignment"] / name
        fixed = test_cell_changes(submitted, release) + restore_nbgrader_metadata(submitted, release)
        if fixed:
            notes.append(f"{name}: " + ", ".join(fixed))
    judging = Judging(course, job) if job["use_judge"] else None
    result = api.autograde(job["assignment"], job["student"], force=True, create=True)
    if not result.get("success"):
        error = autograde_error(result)
        if not job["use_judge"]:
            return {"status": "failed", "reason": f"nbgrader autograde failed: {error}", "checks": []}
        # nbgrader gives up on the whole notebook when the kernel dies (os._exit, a crash): record the
        # submission without running it; the judge, which never needed that kernel, decides the scores.
        notes.append(f"the notebook could not be run to the end ({error}); scores come from the judge")
        api = _load_api(course, execute=False)
        result = api.autograde(job["assignment"], job["student"], force=True, create=True)
        if not result.get("success"):
            return {"status": "failed", "reason": f"nbgrader autograde failed: {autograde_error(result)}", "checks": []}
    timings["autograde"] = time.perf_counter()
    checks = nbgrader_checks(course, job)
    if judging is not None:
        try:
            checks = apply_verdicts(course, job, checks, judging.wait())
            timings["judge_wait"] = time.perf_counter()  # beyond the kernel's run, which it overlaps
            notes += [f"{c['check']}: {c['message'].splitlines()[0][:200]}" for c in checks if not c["passed"]
                      and any(sign in c["message"] for sign in ("did not finish within", "ended without an answer"))]
        except Exception as exc:
            return {"status": "failed", "checks": [], "reason": str(exc)[:300] if "judge error" in str(exc)
                    else f"judge error: {type(exc).__name__}: {exc}"[:300]}
    feedback = api.generate_feedback(job["assignment"], job["student"], force=True)
    timings["feedback"] = time.perf_counter()
    if not feedback.get("success"):
        notes.append("feedback could not be generated")
    return {"status": "graded", "reason": "; ".join(notes), "checks": checks,
            "judge_seconds": round(judging.seconds, 3) if judging else None}


PRELOAD = ["nbgrader.apps", "nbgrader.api", "nbgrader.converters", "nbconvert.exporters", "jupyter_client",
           "nbclient", "traitlets.config.loader", "autograder.grade_one"]  # imported once by the fork server


def child_main(job_file: str, env: dict, cwd: str, log_path: str) -> None:
    """Entry point of a child forked by the pipeline's fork server: its own session, log, environment."""
    import os
    import tempfile

    os.setsid()
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.environ.clear()
    os.environ.update(env)
    tempfile.tempdir = None  # TMPDIR changed: forget the folder the fork server looked up
    os.chdir(cwd)
    global STARTED
    STARTED = time.perf_counter()  # this child's own start, not the fork server's
    sys.exit(main(job_file))


def main(job_file: str) -> int:
    job_path = Path(job_file)
    job = json.loads(job_path.read_text())
    timings = {}
    try:
        result = grade(job, timings)
    except Exception as exc:  # a bug or a damaged gradebook: this submission fails, the batch goes on
        traceback.print_exc()
        result = {"status": "failed", "reason": f"grading error: {type(exc).__name__}: {exc}"[:300], "checks": []}
    marks = list(timings.items())  # seconds spent in each step, for the benchmark
    result["timings"] = {name: round(t - marks[i][1], 3) for i, (name, t) in enumerate(marks[1:])}
    result["timings"]["imports"] = round(marks[0][1] - STARTED, 3) if marks else None
    if result.get("judge_seconds") is not None:  # the judge's own time, alongside the kernel's run
        result["timings"]["judge"] = result.pop("judge_seconds")
    (job_path.parent / "result.json").write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
