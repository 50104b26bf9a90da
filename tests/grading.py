"""Build submissions from the student version and grade them as instructors do (`python -m autograder grade`).

    nb = release_notebook("keras_lesson")                    # what students get
    nb = with_answers(nb, {"freeze_all": "def freeze_all(m): ..."})   # a student's answers, by grade_id
    scores, messages, out = grade_in_production("keras_lesson", {"alice": nb, "bob": other}, tmp_path)
    scores["alice"]["correct_freeze_all"]  -> (score, max_score)
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import nbformat

from conftest import REPO, nbgrader


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


# ---- tables of answers: the same verdict from the visible check, the grader and the Validate button ------
PASS = "pass"


def table_entries(table: dict) -> list[tuple]:
    """(exercise, label, code, expected) for every entry of a table ``{exercise: [(label, code, expected)]}``."""
    return [(exercise, label, code, expected) for exercise, rows in table.items() for label, code, expected in rows]


def test_cell_of(assignment: str, exercise: str) -> str:
    """The released (visible) test cell of an exercise: what the student runs in the kernel."""
    for cell in release_notebook(assignment)["cells"]:
        if grade_id(cell) == f"correct_{exercise}":
            return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
    raise KeyError(exercise)


VISIBLE_RUNNER = r'''
import contextlib, io, json, sys, warnings
from pathlib import Path
from autograder import cells, runner
job = json.loads(sys.stdin.read())
plan = cells.plan_submission(cells.read_notebook(Path(job["source"])), None)
base = {"__name__": "__main__"}
runner.load_program([b for b in plan["program"] if b["owner"] == "instructor"], base)
results = []
for entry in job["entries"]:
    namespace = dict(base)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            exec(compile(entry["code"], "<answer cell>", "exec"), namespace)
            exec(compile(entry["test"], "<test cell>", "exec"), namespace)
        results.append({"passed": True, "message": ""})
    except Exception as error:
        results.append({"passed": False, "message": f"{type(error).__name__}: {error}"})
print("RESULTS " + json.dumps(results))
'''


def visible_verdicts(assignment: str, table: dict) -> dict:
    """{(exercise, label): {"passed", "message"}}: each answer run as the kernel runs it (the answer cell,
    then the released test cell), in a fresh interpreter with the lesson's imports."""
    import subprocess
    import sys

    entries = table_entries(table)
    job = {"source": str(REPO / "source" / assignment / notebook_name(assignment)),
           "entries": [{"code": code, "test": test_cell_of(assignment, exercise)} for exercise, _, code, _ in entries]}
    done = subprocess.run([sys.executable, "-c", VISIBLE_RUNNER], input=json.dumps(job), capture_output=True,
                          text=True, timeout=1800, cwd=REPO)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULTS ")]
    assert lines, done.stderr[-3000:]
    results = json.loads(lines[-1][len("RESULTS "):])
    return {(exercise, label): result for (exercise, label, _, _), result in zip(entries, results)}


def table_submissions(assignment: str, table: dict) -> tuple[dict, dict]:
    """Submissions that carry the table's answers: the k-th one takes the k-th honest answer (``honest_k``) or
    the k-th wrong one (``wrong_k``) of every exercise, the reference elsewhere. Returns (notebooks by
    student id, (exercise, label) -> (student id, check))."""
    reference, student = solutions(assignment), release_notebook(assignment)
    groups: dict = {}
    where = {}
    for exercise, rows in table.items():
        counters = {"honest": 0, "wrong": 0}
        for label, code, expected in rows:
            kind = "honest" if expected == PASS else "wrong"
            sid = f"{kind}_{counters[kind]}"
            counters[kind] += 1
            groups.setdefault(sid, {})[exercise] = code
            where[(exercise, label)] = (sid, f"correct_{exercise}")
    notebooks = {sid: with_answers(student, {**reference, **answers}) for sid, answers in groups.items()}
    return notebooks, where


def judge_verdicts(assignment: str, notebooks: dict, workdir: Path) -> dict:
    """{student: {check: verdict}} from the judge (the production verdicts), one fork server for all."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    from autograder import cells, server as fork_server
    from autograder.judge import check_submission

    source = REPO / "source" / assignment / notebook_name(assignment)
    folder = Path(workdir) / "fork-server"
    folder.mkdir(mode=0o700)
    for sid, nb in notebooks.items():
        (Path(workdir) / f"{sid}.ipynb").write_text(json.dumps(nb))
    threads = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
               "TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1"}
    with fork_server.ForkServer.start(cells.preload_for([source]), folder, env=threads) as running:
        def judge(sid):
            return sid, check_submission(source, Path(workdir) / f"{sid}.ipynb", server=str(running.socket_path),
                                         timeout=900)
        with ThreadPoolExecutor(max_workers=min(2, os.cpu_count() or 1)) as pool:
            return dict(pool.map(judge, sorted(notebooks)))


def validate_failures(assignment: str, answers: dict, workdir: Path) -> tuple[set, str]:
    """Run nbgrader's Validate (the students' button) on the release notebook with these answers: the set
    of exercises whose test cell failed, and validate's output."""
    from conftest import make_course

    course = make_course(Path(workdir) / "course", [assignment])
    name = notebook_name(assignment)
    path = Path(workdir) / name
    path.write_text(json.dumps(with_answers(release_notebook(assignment), {**solutions(assignment), **answers})))
    result = nbgrader("validate", str(path), cwd=course, check=False, timeout=1200)
    out = result.stdout + result.stderr
    failed = set()
    for cell in release_notebook(assignment)["cells"]:
        gid = grade_id(cell) or ""
        if gid.startswith("correct_"):
            source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
            lines = [line for line in source.splitlines() if line.strip() and not line.startswith("#")]
            if lines and lines[-2 if len(lines) > 1 else -1] in out:
                failed.add(gid[len("correct_"):])
    return failed, out


# What a sandboxed process can reach, run inside it (a runner's function, a kernel's cell): probe(paths, port)
SANDBOX_PROBE = """
def probe(paths, port):
    import os, socket
    found = {"uid": os.getuid(), "read": [], "loopback": False, "processes": 0, "environ": dict(os.environ)}
    for path in paths:
        try:
            open(path).read()
            found["read"].append(path)
        except OSError:
            pass
    try:
        socket.create_connection(("127.0.0.1", port), timeout=3).close()
        found["loopback"] = True
    except OSError:
        pass
    found["processes"] = len([p for p in os.listdir("/proc") if p.isdigit()])
    # the environment strings the process started with, read from its memory (env_start..env_end): a fork
    # keeps its parent's, whatever os.environ says now
    import ctypes
    fields = open("/proc/self/stat").read().rsplit(")", 1)[1].split()
    found["environ"]["(initial block)"] = ctypes.string_at(int(fields[-3]), int(fields[-2]) - int(fields[-3])).decode("latin-1")
    return found
"""
