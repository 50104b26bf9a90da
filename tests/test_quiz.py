"""The quiz (issue 5): format checks, hidden grading, feedback, and no leaked answers.

The pipeline tests grade several students in ONE production run, `python -m autograder grade` (module
fixture): the student's kernel sandboxed, the judge's verdicts, the feedback pages. Correct letters are read from the instructor
notebook (source/quiz), never typed here, except the seed's five, which the issue fixes.
"""
from __future__ import annotations

import ast
import builtins
import copy
import hashlib
import html
import json
import re
import shutil
from pathlib import Path

import nbformat
import pytest
from nbgrader.utils import compute_checksum

from conftest import REPO, nbgrader
from grading import grade_id, grade_in_production, release_notebook, solutions, source_notebook, with_answers

from course.checks import quiz as quiz_checks

ASSIGNMENT = "quiz"
QUESTIONS = range(1, 14)
LETTERS = "ABCD"
SEED_LETTERS = {1: "A", 2: "A", 3: "C", 4: "D", 5: "B"}  # issue 5: the seed's correct options


def text(cell) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def cells_by_id(nb) -> dict:
    return {grade_id(c): c for c in nb["cells"] if grade_id(c)}


def correct_letters() -> dict[int, str]:
    """Question number -> correct letter, from the instructor's solution cells."""
    letters = {}
    for gid, code in solutions(ASSIGNMENT).items():
        match = re.fullmatch(r'answer_q(\d+) = "([A-D])"', code.split("### BEGIN SOLUTION\n")[1].split("\n")[0])
        letters[int(match[1])] = match[2]
    return letters


def hidden_lines(cell_source: str) -> list[str]:
    lines, inside = [], False
    for line in cell_source.split("\n"):
        if "BEGIN HIDDEN TESTS" in line:
            inside = True
        elif "END HIDDEN TESTS" in line:
            inside = False
        elif inside:
            lines.append(line.strip())
    return lines


def worked_solution(n: int) -> list[str]:
    """The lines the hidden part of question n's test cell prints (solution, quick check, mistakes)."""
    source = text(cells_by_id(source_notebook(ASSIGNMENT))[f"correct_q{n}"])
    printed = source.split('print("""\n', 1)[1].split('\n""")', 1)[0]
    return printed.split("\n")


# ---------------------------------------------------------------- answer format (course/checks/quiz.py)

@pytest.mark.parametrize("value, letter", [("A", "A"), ("b", "B"), ("C ", "C"), ("  d\n", "D"), (" a ", "A")])
def test_letters_in_any_case_with_surrounding_spaces_are_accepted(value, letter):
    assert quiz_checks.normalised_letter(value) == letter
    assert quiz_checks.answer_letter({"answer_q4": value}, 4) == letter


@pytest.mark.parametrize("value, says", [
    (None, "answer_q7 is None"), (3, "(type int), not a letter"), (1.0, "(type float), not a letter"),
    (True, "(type bool), not a letter"), (["A"], "(type list), not a letter"), ("AB", "choose exactly one letter"),
    ("A B", "choose exactly one letter"), ("E", "not one of the options"), ("", "empty string"),
    ("  ", "empty string"), ("Ä", "not one of the options"),
])
def test_malformed_answers_fail_with_a_message_saying_what_is_wrong(value, says):
    assert quiz_checks.normalised_letter(value) is None
    with pytest.raises(AssertionError) as error:
        quiz_checks.answer_letter({"answer_q7": value}, 7)
    assert says in str(error.value) and "Question 7" in str(error.value) and '"A", "B", "C", "D"' in str(error.value)


def test_an_unanswered_question_says_it_is_not_answered():
    with pytest.raises(AssertionError, match="Question 2 is not answered yet: answer_q2 is not defined"):
        quiz_checks.answer_letter({"answer_q1": "A"}, 2)


def test_the_format_check_treats_all_four_letters_alike():
    """It cannot favour the correct option: every letter passes and reads as itself."""
    for n in QUESTIONS:
        assert [quiz_checks.answer_letter({f"answer_q{n}": L}, n) for L in LETTERS] == list(LETTERS)


def test_a_str_subclass_cannot_fake_a_letter():
    class Anything(str):
        def __eq__(self, other):
            return True

        __hash__ = str.__hash__

        def strip(self, *args):
            return self

        def upper(self):
            return self

    letter = quiz_checks.answer_letter({"answer_q1": Anything(" b")}, 1)
    assert type(letter) is str and letter == "B" and letter != "A"
    assert quiz_checks.normalised_letter(Anything("zz")) is None


# ---------------------------------------------------------------- notebook structure (contract)

def test_thirteen_questions_each_with_answer_and_test_cell_and_the_seed_letters():
    cells = cells_by_id(source_notebook(ASSIGNMENT))
    for n in QUESTIONS:
        answer, test = cells[f"answer_q{n}"]["metadata"]["nbgrader"], cells[f"correct_q{n}"]["metadata"]["nbgrader"]
        assert answer["solution"] and not answer["grade"], n
        assert test["grade"] and not test["solution"] and test["locked"] and test["points"] > 0, n
    letters = correct_letters()
    assert sorted(letters) == list(QUESTIONS)
    assert {n: letters[n] for n in SEED_LETTERS} == SEED_LETTERS
    assert len({letters[n] for n in range(6, 14)}) >= 3, "questions 6-13 should not share one correct letter"


def test_each_test_cell_is_self_contained_and_prints_the_solution_before_judging():
    """Only its answer_qN, its own imports and its own assignments; the worked solution prints first."""
    cells = cells_by_id(source_notebook(ASSIGNMENT))
    for n in QUESTIONS:
        source = text(cells[f"correct_q{n}"])
        tree = ast.parse(source)
        defined = {a.asname or a.name for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                   for a in node.names}
        defined |= {t.id for node in ast.walk(tree) if isinstance(node, ast.Assign) for t in node.targets
                    if isinstance(t, ast.Name)}
        used = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)}
        outside = used - defined - set(dir(builtins))
        assert outside <= {f"answer_q{n}"}, (n, outside)
        assert source.index('print("""') < source.index("answer_letter(globals()") < source.index('letter == "')


# ---------------------------------------------------------------- nothing gives the answers away

def files_students_get() -> list[Path]:
    return [p for root in (REPO / "release" / ASSIGNMENT, REPO / "course") for p in root.rglob("*") if p.is_file()]


def is_text(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def leak_markers(n: int, letter: str) -> list[str]:
    """Texts that would give question n's answer away: its solution line and every hidden line."""
    cells = cells_by_id(source_notebook(ASSIGNMENT))
    solution_line = f'answer_q{n} = "{letter}"'
    hidden = [line for line in hidden_lines(text(cells[f"correct_q{n}"])) if len(line) >= 25]
    return [solution_line, *hidden]


def letter_patterns(n: int, letter: str) -> list[re.Pattern]:
    """The correct letter written next to the question's number or name, e.g. q3: "C" or answer_q3 == 'C'."""
    return [re.compile(rf"""\b(answer_)?q{n}["']?\s*(==?|:)\s*["']{letter}["']""".encode(), re.I),
            re.compile(rf"""["']{n}["']?\s*:\s*["']{letter}["']""".encode()),
            re.compile(rf"""(question|option)\s*{n}\s*(is|=|:|->)\s*["']?{letter}\b""".encode(), re.I),
            re.compile(rf"""\b(answer|option)\s+{letter}\b[^\n]{{0,20}}question\s*{n}\b""".encode(), re.I)]


def test_the_leak_markers_really_find_the_answers_in_the_instructor_notebook():
    """Positive control: the markers and patterns used below do match where the answers really are."""
    source = (REPO / "source" / ASSIGNMENT / "quiz.ipynb").read_text()
    instructor = "\n".join(text(c) for c in source_notebook(ASSIGNMENT)["cells"]).encode()
    for n, letter in correct_letters().items():
        markers = leak_markers(n, letter)
        assert len(markers) >= 6, (n, markers)  # solution line, assert line, steps, answer, quick check, mistakes
        assert all(m in instructor.decode() for m in markers)
        assert re.search(letter_patterns(n, letter)[0], instructor), n
        assert json.dumps(markers[0])[1:-1] in source


def test_no_file_students_get_contains_a_correct_answer():
    files = {p: p.read_bytes() for p in files_students_get()}
    assert REPO / "release" / ASSIGNMENT / "quiz.ipynb" in files and REPO / "course" / "checks" / "quiz.py" in files
    found = []
    for n, letter in correct_letters().items():
        for marker in leak_markers(n, letter):
            needles = {marker.encode(), json.dumps(marker)[1:-1].encode(), html.escape(marker).encode()}
            found += [(n, str(p.relative_to(REPO)), marker) for p, data in files.items() if any(x in data for x in needles)]
        for pattern in letter_patterns(n, letter):  # text files only: a pattern in weight bytes means nothing
            found += [(n, str(p.relative_to(REPO)), pattern.pattern) for p, data in files.items()
                      if is_text(data) and pattern.search(data)]
    assert not found, found


def guessed_digests() -> set[str]:
    """What a student could compute by trying each letter: digests of the letters themselves, and the
    nbgrader checksum of each instructor answer cell and test cell with the letter put in its place."""
    digests = {getattr(hashlib, algo)(form.encode()).hexdigest() for algo in ("md5", "sha1", "sha256")
               for L in LETTERS for form in (L, L.lower(), f'"{L}"')}
    instructor = cells_by_id(source_notebook(ASSIGNMENT))
    for n, letter in correct_letters().items():
        for gid in (f"answer_q{n}", f"correct_q{n}"):
            cell = nbformat.from_dict(copy.deepcopy(instructor[gid]))
            original = text(cell)
            for guess in LETTERS:
                cell.source = original.replace(f'"{letter}"', f'"{guess}"')
                digests.add(compute_checksum(cell))
    return digests


def test_students_get_no_hash_of_an_answer():
    """Four guesses would crack any hash of a single letter: the only digests shipped are nbgrader's
    checksums of the cells exactly as students see them, and no guess reproduces one of them."""
    release = nbformat.read(REPO / "release" / ASSIGNMENT / "quiz.ipynb", as_version=4)
    own_checksums = {compute_checksum(c) for c in release.cells if "nbgrader" in c.metadata}
    guesses = guessed_digests()
    assert len(guesses) > 10 * 2 * 4 - 2  # the guessing really produced distinct digests
    shipped = [p for p in (REPO / "release" / ASSIGNMENT).rglob("*") if p.is_file()]
    shipped.append(REPO / "course" / "checks" / "quiz.py")
    for path in shipped:
        data = path.read_text()
        hexes = set(re.findall(r"[0-9a-fA-F]{32,}", data))
        assert hexes <= own_checksums, (path, hexes - own_checksums)
        assert not any(d in data for d in guesses), path
        assert "hashlib" not in data, path


# ---------------------------------------------------------------- the production grading pipeline

def malformed_answers(letters: dict[int, str]) -> tuple[dict[str, str], dict[int, str]]:
    """One submission with a different kind of malformed answer per question, and what each must score."""
    def wrong(n):
        return LETTERS[(LETTERS.index(letters[n]) + 1) % 4]

    cases = {  # n: (answer cell code, "full" or "zero") as documented in the notebook's intro cell
        1: (f'answer_q1 = "{letters[1].lower()}"', "full"),          # lower case of the right letter
        2: (f'answer_q2 = "{letters[2]} "', "full"),                 # trailing space
        3: ("answer_q3 = None", "zero"),
        4: (f"answer_q4 = {LETTERS.index(letters[4]) + 1}", "zero"),  # the option's number, not its letter
        5: (f'answer_q5 = "{wrong(5).lower()}"', "zero"),             # lower case of a wrong letter
        6: (f'answer_q6 = " {letters[6]}"', "full"),                 # leading space
        7: (f'answer_q7 = "{letters[7] * 2}"', "zero"),              # two letters
        8: ('answer_q8 = "E"', "zero"),
        9: ('answer_q9 = ""', "zero"),
        10: (None, "zero"),                                          # placeholder left in place
        11: (f'answer_q11 = "{letters[11]}"', "full"),
        12: (f'answer_q12 = "{wrong(12)}"', "zero"),
        13: (f'answer_q13 = "  {letters[13].lower()}  "', "full"),  # spaces on both sides, lower case
    }
    code = {f"answer_q{n}": c for n, (c, _) in cases.items() if c is not None}
    return code, {n: outcome for n, (_, outcome) in cases.items()}


MALFORMED_MESSAGES = {3: "answer_q3 is None", 4: "(type int), not a letter", 7: "choose exactly one letter",
                      8: "not one of the options", 9: "empty string", 10: "Question 10 is not answered yet"}


# A student who, instead of answering, makes the format check return a string that equals anything.
TAMPER = '''
import course.checks.quiz as format_checks

class EqualsAnything(str):
    def __eq__(self, other):
        return True
    __hash__ = str.__hash__

format_checks.answer_letter = lambda namespace, question: EqualsAnything("A")
print("patched format check reads B as A:", format_checks.answer_letter({"answer_q5": "B"}, 5) == "A")
'''


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """One production grading run (`python -m autograder grade`: sandboxed kernel, the judge's verdicts, feedback
    pages): all right, all wrong, malformed, untouched, and a student who patches the format check."""
    letters = correct_letters()
    student_nb = release_notebook(ASSIGNMENT)
    wrong = {f"answer_q{n}": f'answer_q{n} = "{LETTERS[(LETTERS.index(L) + 1) % 4]}"' for n, L in letters.items()}
    malformed, outcomes = malformed_answers(letters)
    submissions = {"all_right": with_answers(student_nb, solutions(ASSIGNMENT)),
                   "all_wrong": with_answers(student_nb, wrong),
                   "malformed": with_answers(student_nb, malformed),
                   "untouched": student_nb,
                   "tamper": with_answers(student_nb, {**wrong, "answer_q1": TAMPER})}
    scores, messages, out = grade_in_production(ASSIGNMENT, submissions, tmp_path_factory.mktemp("quiz"))
    return {"scores": scores, "messages": messages, "out": out, "outcomes": outcomes}


def quiz_scores(scores: dict, student: str) -> dict[int, tuple]:
    return {n: scores[student][f"correct_q{n}"] for n in QUESTIONS}


def printed_in_feedback(out: Path, student: str) -> str:
    """What the student's feedback page shows as printed output (the grader's run of each test cell included),
    not the highlighted source of the cells."""
    page = (out / "feedback" / f"{student}.html").read_text()
    outputs = re.findall(r'(?:output_stdout[^"]*"|data-mime-type="text/plain")[^>]*>\s*<pre>(.*?)</pre>', page, re.S)
    return html.unescape("\n".join(re.sub(r"<[^>]+>", "", o) for o in outputs))


def test_all_right_answers_get_full_marks(graded):
    scores = quiz_scores(graded["scores"], "all_right")
    assert all(score == maximum > 0 for score, maximum in scores.values()), scores


def test_all_wrong_answers_get_zero(graded):
    scores = quiz_scores(graded["scores"], "all_wrong")
    assert all(score == 0 and maximum > 0 for score, maximum in scores.values()), scores


def test_the_untouched_student_notebook_gets_zero(graded):
    scores = quiz_scores(graded["scores"], "untouched")
    assert all(score == 0 for score, _ in scores.values()), scores


def test_a_patched_format_check_earns_nothing(graded):
    scores = quiz_scores(graded["scores"], "tamper")
    assert all(score == 0 for score, _ in scores.values()), scores
    # the patch really ran in the student's kernel (its answer cell printed this), and still earned nothing
    assert "patched format check reads B as A: True" in printed_in_feedback(graded["out"], "tamper")


def test_malformed_answers_are_scored_as_documented(graded):
    scores = quiz_scores(graded["scores"], "malformed")
    expected = {n: (maximum if graded["outcomes"][n] == "full" else 0) for n, (_, maximum) in scores.items()}
    assert {n: score for n, (score, _) in scores.items()} == expected


def test_malformed_answers_are_told_what_is_wrong(graded):
    messages = graded["messages"]["malformed"]
    for n, message in MALFORMED_MESSAGES.items():
        assert message in messages[f"correct_q{n}"], (n, messages[f"correct_q{n}"])


def test_feedback_shows_the_worked_solution_whether_right_or_wrong(graded):
    for student in ("all_right", "all_wrong", "malformed", "untouched"):
        printed = printed_in_feedback(graded["out"], student)
        for n in QUESTIONS:
            assert all(line in printed for line in worked_solution(n)), (student, n)


def test_instructor_notebook_passes_validate(tmp_path):
    course = tmp_path / "course"
    shutil.copytree(REPO / "source" / ASSIGNMENT, course)
    shutil.copy(REPO / "nbgrader_config.py", course)
    result = nbgrader("validate", "quiz.ipynb", cwd=course)
    assert "Success! Your notebook passes all the tests." in result.stdout, result.stdout


def test_untouched_student_notebook_fails_every_test_in_validate(tmp_path):
    course = tmp_path / "course"
    shutil.copytree(REPO / "release" / ASSIGNMENT, course)
    shutil.copy(REPO / "nbgrader_config.py", course)
    result = nbgrader("validate", "--invert", "quiz.ipynb", cwd=course)
    assert "Success! The notebook does not pass any tests." in result.stdout, result.stdout
