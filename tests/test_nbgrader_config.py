"""The course's nbgrader settings: a correct answer never loses points to text on stderr, in the
students' Validate as in grading; errors still fail."""
import json

import nbformat
import pytest

from conftest import nbgrader

SOLUTION = {"grade": False, "grade_id": "x", "locked": False, "schema_version": 3, "solution": True, "task": False}
TEST = {"grade": True, "grade_id": "correct_x", "locked": True, "points": 1, "schema_version": 3, "solution": False,
        "task": False}


def write_assignment(course, test_source):
    nb = nbformat.v4.new_notebook()
    nb.metadata.kernelspec = {"name": "python3", "display_name": "Python 3", "language": "python"}
    answer = nbformat.v4.new_code_cell("### BEGIN SOLUTION\nx = 1\n### END SOLUTION")
    answer.metadata.nbgrader = SOLUTION
    test = nbformat.v4.new_code_cell(test_source)
    test.metadata.nbgrader = TEST
    nb.cells = [answer, test]
    (course / "source" / "noisy").mkdir(parents=True)
    nbformat.write(nb, course / "source" / "noisy" / "noisy.ipynb")
    return course / "source" / "noisy" / "noisy.ipynb"


NOISY = "import sys, warnings\nwarnings.warn('a library warning')\nprint('log line', file=sys.stderr)\nassert x == 1"


def test_validate_ignores_stderr_but_not_errors(course_dir):
    path = write_assignment(course_dir, NOISY)
    result = nbgrader("validate", str(path), cwd=course_dir)
    assert "Success! Your notebook passes all the tests." in result.stdout
    broken = json.loads(path.read_text())
    broken["cells"][1]["source"] = NOISY.replace("x == 1", "x == 2")
    path.write_text(json.dumps(broken))
    result = nbgrader("validate", str(path), cwd=course_dir, check=False)
    assert "VALIDATION FAILED" in result.stdout and "AssertionError" in result.stdout


def test_autograde_gives_full_marks_despite_stderr(course_dir):
    from nbgrader.api import Gradebook

    path = write_assignment(course_dir, NOISY)
    nbgrader("generate_assignment", "noisy", "--force", cwd=course_dir)
    submitted = course_dir / "submitted" / "ana" / "noisy"
    submitted.mkdir(parents=True)
    submitted.joinpath("noisy.ipynb").write_text(path.read_text().replace("### BEGIN SOLUTION\\n", "").replace("### END SOLUTION", ""))
    nbgrader("autograde", "noisy", "--force", cwd=course_dir)
    with Gradebook(f"sqlite:///{course_dir / 'gradebook.db'}") as gb:
        assert gb.find_submission("noisy", "ana").score == 1


@pytest.mark.filterwarnings("ignore:Object of type")  # nbgrader's own SQLAlchemy session warnings, in-process
def test_protected_autograde_sets_the_test_cells_aside(course_dir):
    """With the judge deciding, the kernel runs a placeholder for each test cell (the judge
    runs them), and the autograded notebook gets the real test source back. Without it, they run."""
    from autograder.grade_one import _load_api
    from autograder.set_aside import PLACEHOLDER

    test_source = "set_aside_marker = 'the test cell ran in the kernel'\nassert x == 1"
    path = write_assignment(course_dir, test_source)
    nb = json.loads(path.read_text())
    later = nbformat.v4.new_code_cell("print(globals().get('set_aside_marker', 'not run in the kernel'))")
    nb["cells"].append(later)
    path.write_text(json.dumps(nb))
    nbgrader("generate_assignment", "noisy", "--force", cwd=course_dir)
    submitted = course_dir / "submitted" / "ana" / "noisy"
    submitted.mkdir(parents=True)
    submitted.joinpath("noisy.ipynb").write_text(path.read_text())
    printed = {}
    for set_aside in (True, False):
        result = _load_api(course_dir, set_aside_tests=set_aside).autograde("noisy", "ana", force=True, create=True)
        assert result["success"], result.get("log")
        graded = nbformat.read(course_dir / "autograded" / "ana" / "noisy" / "noisy.ipynb", as_version=4)
        source = graded.cells[1].source
        assert source == test_source and PLACEHOLDER.strip() not in source
        printed[set_aside] = "".join(o.get("text", "") for o in graded.cells[2].outputs).strip()
    assert printed == {True: "not run in the kernel", False: "the test cell ran in the kernel"}
