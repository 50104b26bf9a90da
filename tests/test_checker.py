"""The tamper-proof checker (autograder/checker.py): hostile submissions get exactly what their honest work
deserves, honest submissions in every style pass, and plain nbgrader is shown to be fooled by the same attacks.

Hostile and honest submissions live in tests/fixtures/hostile/*.py: a header names the toy notebook
(tests/fixtures/hostile/toy_*.ipynb, an instructor notebook in nbgrader's format) and the expected verdicts,
then ``# %% <grade_id>`` sections hold the student's answer cells. ``# %% +`` adds a cell, ``# %% test:ID``
overwrites the submission's copy of a test cell, ``# %% duplicate:ID`` / ``# %% delete:ID`` duplicate or
delete one. The lessons' own reference and blank notebooks are checked when the lessons are released.
"""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

from conftest import REPO, make_course, nbgrader

from autograder.checker import check_submission, choose_statements

HOSTILE = Path(__file__).parent / "fixtures" / "hostile"
CELL_TIMEOUT = 4  # seconds per test cell in these toy notebooks (their honest cells take milliseconds)


# ---- building submissions --------------------------------------------------------------------------------
def grade_id(cell: dict):
    return cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")


def text(cell: dict) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def student_version(source_nb: dict) -> dict:
    """What nbgrader generate_assignment gives students: solutions stubbed, hidden tests removed."""
    nb = copy.deepcopy(source_nb)
    for cell in nb["cells"]:
        body = text(cell)
        body = re.sub(r"### BEGIN SOLUTION.*?### END SOLUTION", "# YOUR CODE HERE\nraise NotImplementedError()",
                      body, flags=re.S)
        cell["source"] = re.sub(r"\n?### BEGIN HIDDEN TESTS.*?### END HIDDEN TESTS", "", body, flags=re.S)
    return nb


def parse_fixture(path: Path) -> dict:
    header, sections, current = {}, [], None
    for line in path.read_text().splitlines(keepends=True):
        match = re.match(r"# (toy|lesson|attack|honest|expect|message): (.*)", line)
        if current is None and match:
            header[match.group(1)] = match.group(2).strip()
        elif line.startswith("# %% "):
            current = [line[5:].strip(), ""]
            sections.append(current)
        elif current is not None:
            current[1] += line
    expect = dict(item.split("=") for item in header["expect"].split())
    return {"toy": header.get("toy"), "lesson": header.get("lesson"), "sections": sections,
            "expect": {k: v == "pass" for k, v in expect.items()}, "what": header.get("attack") or header.get("honest"),
            "messages": dict(item.split("~", 1) for item in header.get("message", "").split(" ; ") if item)}


def build_submission(fixture: dict) -> dict:
    nb = student_version(json.loads((HOSTILE / f"{fixture['toy']}.ipynb").read_text()))
    cells = nb["cells"]
    for key, code in fixture["sections"]:
        code = code.rstrip("\n")
        if key == "+":
            cells.insert(2, {"cell_type": "code", "metadata": {}, "source": code, "outputs": [], "execution_count": None})
            continue
        action, _, target = key.rpartition(":")
        index = next(i for i, c in enumerate(cells) if grade_id(c) == target)
        if action == "delete":
            del cells[index]
        elif action == "duplicate":
            cells.insert(index, copy.deepcopy(cells[index]))
        else:  # an answer cell, or a test cell the student edited
            cells[index]["source"] = code
    return nb


def fixtures(lessons: bool = False) -> list[Path]:
    return sorted(p for p in HOSTILE.glob("*.py") if p.name.startswith("lesson_") == lessons)


def verdicts_for(nb: dict, toy: str, tmp_path: Path, **kwargs) -> dict:
    submitted = tmp_path / "submitted.ipynb"
    submitted.write_text(json.dumps(nb))
    before = submitted.read_bytes()
    result = check_submission(HOSTILE / f"{toy}.ipynb", submitted, cell_timeout=CELL_TIMEOUT, **kwargs)
    assert submitted.read_bytes() == before, "the checker must not modify the submission"
    return result


def outcome(verdicts: dict) -> dict:
    return {gid: v["passed"] for gid, v in verdicts.items()}


# ---- statement selection (parent side, no child process) ---------------------------------------------------
def test_only_definitions_imports_and_literals_are_chosen():
    source = ('import os; os.system("echo hi")\nanswer_q1 = "B"\nx, (y, z) = 1, (2, 3)\nbuiltins.len = 3\n'
              'sum = lambda *a: 0\n@dec\ndef f(a=g()):\n    return a\nclass C:\n    pass\nf()\n'
              'from course.checks.quiz import answer_letter\n"""a docstring"""\n')
    chosen, notes = choose_statements(source, student=True)
    assert [(s["kind"], s["names"]) for s in chosen] == [
        ("code", ["os"]), ("literal", ["answer_q1"]), ("literal", ["x", "y", "z"]), ("code", ["f"]), ("code", ["C"])]
    assert chosen[0]["source"] == "import os", "a statement after `;` must not ride along with an import"
    assert chosen[3]["source"].startswith("@dec\ndef f"), "decorators belong to their def"
    ignored = " ".join(notes)
    for line in ('os.system("echo hi")', "builtins.len = 3", "sum = lambda", "f()", "course.checks.quiz"):
        assert line in ignored, f"{line!r} should be reported as ignored: {notes}"


def test_ipython_syntax_in_an_answer_cell_does_not_hide_its_definitions():
    chosen, notes = choose_statements("%matplotlib inline\n!ls\ndef f():\n    return 1\n", student=True)
    assert [s["names"] for s in chosen] == [["f"]]
    assert len(notes) == 2


# ---- the toy notebooks: reference and blank -------------------------------------------------------------------
@pytest.mark.parametrize("toy", ["toy_python", "toy_torch"])
def test_reference_passes_and_blank_fails_every_cell(toy, tmp_path):
    source = json.loads((HOSTILE / f"{toy}.ipynb").read_text())
    reference = verdicts_for(source, toy, tmp_path)
    assert reference and all(v["passed"] for v in reference.values()), reference
    blank = verdicts_for(student_version(source), toy, tmp_path)
    assert set(blank) == set(reference)
    assert not any(v["passed"] for v in blank.values()), blank
    assert all("NotImplementedError" in v["message"] or "not defined" in v["message"] for v in blank.values()), blank


# ---- hostile and honest fixtures --------------------------------------------------------------------------------
@pytest.mark.parametrize("path", fixtures(), ids=lambda p: p.stem)
def test_fixture_gets_exactly_what_its_honest_work_deserves(path, tmp_path):
    fixture = parse_fixture(path)
    verdicts = verdicts_for(build_submission(fixture), fixture["toy"], tmp_path)
    assert outcome(verdicts) == fixture["expect"], f"{fixture['what']}: {json.dumps(verdicts, indent=1)}"
    for gid, verdict in verdicts.items():
        if not verdict["passed"]:
            assert verdict["message"].strip(), f"{gid} failed without saying why"
    for gid, part in fixture["messages"].items():
        assert part.replace("CELL_TIMEOUT", f"{CELL_TIMEOUT:g}") in verdicts[gid]["message"], verdicts[gid]


def test_ignored_statements_are_named_in_a_failing_verdict(tmp_path):
    nb = build_submission({"toy": "toy_python", "sections": [["q1", 'answer_q1 = "b".upper()']]})
    verdicts = verdicts_for(nb, "toy_python", tmp_path)
    assert not verdicts["correct_q1"]["passed"]
    assert 'answer_q1 = "b".upper()' in verdicts["correct_q1"]["message"], verdicts["correct_q1"]


def test_unreadable_submission_fails_every_cell_with_the_reason(tmp_path):
    submitted = tmp_path / "broken.ipynb"
    submitted.write_text("{not json")
    verdicts = check_submission(HOSTILE / "toy_python.ipynb", submitted)
    assert set(verdicts) == {"correct_q1", "correct_total", "correct_count_long"}
    assert all(not v["passed"] and "not a readable notebook" in v["message"] for v in verdicts.values())


def test_submission_time_limit_fails_the_cells_it_did_not_reach(tmp_path):
    nb = build_submission(parse_fixture(HOSTILE / "infinite_loop.py"))
    submitted = tmp_path / "loop.ipynb"
    submitted.write_text(json.dumps(nb))
    verdicts = check_submission(HOSTILE / "toy_python.ipynb", submitted, timeout=6, cell_timeout=30)
    assert verdicts["correct_q1"]["passed"]
    assert not verdicts["correct_total"]["passed"] and not verdicts["correct_count_long"]["passed"]
    assert "time limit" in verdicts["correct_count_long"]["message"], verdicts


# ---- the same attacks against plain nbgrader: the threat is real ------------------------------------------------
def test_plain_nbgrader_is_fooled_where_the_checker_is_not(tmp_path):
    """Real nbgrader generate_assignment + autograde on the toy: the input-transformer attack (every answer
    wrong or missing but one) gets full marks there; the checker gives it what its work deserves."""
    name = "ipython_input_transformer"
    fixture = parse_fixture(HOSTILE / f"{name}.py")
    course = make_course(tmp_path / "course", [])
    (course / "source" / "toy").mkdir(parents=True)
    (course / "source" / "toy" / "toy.ipynb").write_text((HOSTILE / "toy_python.ipynb").read_text())
    nbgrader("generate_assignment", "toy", "--force", cwd=course)
    nb = json.loads((course / "release" / "toy" / "toy.ipynb").read_text())
    for key, code in fixture["sections"]:
        for cell in nb["cells"]:
            if grade_id(cell) == key:
                cell["source"] = code.rstrip("\n")
    folder = course / "submitted" / "mallory" / "toy"
    folder.mkdir(parents=True)
    (folder / "toy.ipynb").write_text(json.dumps(nb))
    nbgrader("autograde", "toy", "--force", cwd=course, check=False)
    from nbgrader.api import Gradebook
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        plain = {g.name: g.score == g.max_score for g in gb.find_submission_notebook("toy", "toy", "mallory").grades}
    assert plain == {gid: True for gid in fixture["expect"]}, f"plain nbgrader was not fooled: {plain}"
    verdicts = check_submission(course / "source" / "toy" / "toy.ipynb", folder / "toy.ipynb", cell_timeout=CELL_TIMEOUT)
    assert outcome(verdicts) == fixture["expect"], verdicts


# ---- the course's own assignments, once released -------------------------------------------------------------------
def lesson_submission(fixture: dict) -> tuple[Path, dict, dict]:
    """(source notebook, submission, expected verdicts): the reference answers with the fixture's cells over them."""
    from grading import notebook_name, release_notebook, solutions, with_answers
    assignment = fixture["lesson"]
    if not list((REPO / "release" / assignment).glob("*.ipynb")):
        pytest.skip(f"release/{assignment} not generated yet")
    answers = {**solutions(assignment), **{k: v.rstrip("\n") for k, v in fixture["sections"]}}
    source = REPO / "source" / assignment / notebook_name(assignment)
    ids = [grade_id(c) for c in json.loads(source.read_text())["cells"]
           if c.get("metadata", {}).get("nbgrader", {}).get("grade") and not c["metadata"]["nbgrader"].get("solution")]
    expected = {gid: fixture["expect"].get(gid, fixture["expect"].get("*")) for gid in ids}
    return source, with_answers(release_notebook(assignment), answers), expected


@pytest.mark.parametrize("path", fixtures(lessons=True), ids=lambda p: p.stem)
def test_lesson_attacks_get_exactly_what_their_honest_work_deserves(path, tmp_path):
    """Per lesson, one submission: reference answers except the attacked cells, which must fail while every
    other cell passes (a blank notebook failing every cell is measured by benchmarks/checker.py)."""
    fixture = parse_fixture(path)
    source, nb, expected = lesson_submission(fixture)
    submitted = tmp_path / "submitted.ipynb"
    submitted.write_text(json.dumps(nb))
    verdicts = check_submission(source, submitted)
    wrong = {gid: v["message"][:300] for gid, v in verdicts.items() if v["passed"] != expected[gid]}
    assert set(verdicts) == set(expected) and not wrong, f"{fixture['what']}: {wrong}"
