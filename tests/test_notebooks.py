"""Notebooks are clean in git and release/ is exactly what nbgrader generates from source/."""
import json

import pytest

from autograder import notebooks
from conftest import REPO, make_course, nbgrader

ASSIGNMENTS = sorted(p.name for p in (REPO / "source").iterdir() if p.is_dir())


def test_every_notebook_is_clean():
    offenders = {str(p.relative_to(REPO)): notebooks.problems(json.loads(p.read_text()))
                 for p in notebooks.tracked_notebooks() if p.exists()}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_clean_strips_outputs_counts_and_fixes_the_kernel():
    nb = {"cells": [{"cell_type": "code", "source": "1", "outputs": [{"output_type": "stream"}], "execution_count": 3,
                     "metadata": {}}], "metadata": {"kernelspec": {"name": "python-other"}}}
    assert len(notebooks.problems(nb)) == 3  # outputs, kernel, language_info
    assert notebooks.problems(notebooks.clean(nb)) == []


def test_every_notebook_has_the_metadata_jupyterlab_writes():
    """JupyterLab stores the kernel's `kernelspec` and `language_info` in a notebook it opens and marks the
    notebook modified when they differ (key by key, Python version included): the committed notebooks carry
    exactly what it writes for the course's Python, so they open unmodified (tests/test_browser.py checks
    that in a real JupyterLab)."""
    for path in notebooks.tracked_notebooks():
        if path.exists():
            metadata = json.loads(path.read_text())["metadata"]
            assert metadata["kernelspec"] == notebooks.KERNELSPEC, path
            assert metadata["language_info"] == notebooks.LANGUAGE_INFO, path


def test_language_info_is_what_ipykernel_reports():
    """The reference metadata is ipykernel's own `language_info`, but for the Python version (the course's
    reference Python, which may differ from the Python running this test)."""
    from ipykernel.ipkernel import IPythonKernel

    reported = dict(IPythonKernel.language_info)
    assert notebooks.LANGUAGE_INFO == {**reported, "version": notebooks.PYTHON_VERSION}
    assert notebooks.PYTHON_VERSION.startswith("3.11.")


def test_clean_sets_the_metadata_and_leaves_the_cells_alone():
    cell = {"cell_type": "markdown", "id": "a", "source": "# Title", "metadata": {"nbgrader": {"grade": False}}}
    metadata = {"kernelspec": dict(notebooks.KERNELSPEC), "language_info": {"name": "python"}}
    nb = {"cells": [dict(cell)], "metadata": metadata, "nbformat": 4, "nbformat_minor": 5}
    assert notebooks.problems(nb) == ["language_info is not what JupyterLab writes (run `make clean-notebooks`)"]
    cleaned = notebooks.clean(nb)
    assert cleaned["metadata"]["language_info"] == notebooks.LANGUAGE_INFO
    assert cleaned["cells"] == [cell]
    cleaned["metadata"]["language_info"]["codemirror_mode"]["version"] = 2  # a copy, not the constant
    assert notebooks.LANGUAGE_INFO["codemirror_mode"]["version"] == 3


def without_ids(nb):
    for cell in nb["cells"]:
        cell.pop("id", None)
    return nb


def test_there_is_something_to_release():
    assert {"keras_lesson", "pytorch_lesson", "quiz"} <= set(ASSIGNMENTS)


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_release_is_generated_from_source(assignment, tmp_path):
    course = make_course(tmp_path / "course", [assignment])
    nbgrader("generate_assignment", assignment, "--force", cwd=course)
    generated = sorted((course / "release" / assignment).rglob("*"))
    committed = sorted((REPO / "release" / assignment).rglob("*"))
    assert [p.relative_to(course / "release") for p in generated] == [p.relative_to(REPO / "release") for p in committed]
    for new, old in zip(generated, committed):
        if new.suffix == ".ipynb":
            assert without_ids(json.loads(new.read_text())) == without_ids(json.loads(old.read_text())), (
                f"release/{assignment}/{new.name} is stale: run `make release` and commit it")
        elif new.is_file():
            assert new.read_bytes() == old.read_bytes()
    # the grading pipeline reads the assignment's points from the release notebooks, not the gradebook
    from nbgrader.api import Gradebook

    from autograder.pipeline import max_code_score
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        assert max_code_score(course / "release" / assignment) == gb.find_assignment(assignment).max_code_score > 0


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_test_cells_are_self_contained(assignment):
    """Protected grading runs the test cells in the judge only (autograder/set_aside.py): no other cell
    may depend on a name that only a test cell defines."""
    from autograder.set_aside import test_cell_dependencies

    for path in sorted((REPO / "source" / assignment).glob("*.ipynb")):
        assert test_cell_dependencies(json.loads(path.read_text())) == [], path.name


def test_a_dependency_on_a_test_cell_is_found():
    from autograder.set_aside import test_cell_dependencies

    test = {"cell_type": "code", "source": "import math\nchecked = True",
            "metadata": {"nbgrader": {"grade": True, "solution": False, "grade_id": "correct_x"}}}
    later = {"cell_type": "code", "source": "print(checked, math.pi)", "metadata": {}}
    assert test_cell_dependencies({"cells": [test, later]}) == [
        "cell 2 reads checked, defined by test cell correct_x", "cell 2 reads math, defined by test cell correct_x"]
    rebound = {"cell_type": "code", "source": "checked = False\nimport math", "metadata": {}}
    assert test_cell_dependencies({"cells": [test, rebound, later]}) == []
