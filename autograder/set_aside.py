"""When the judge decides, the student's kernel does not run the test cells a second time.

In protected grading the score of every test cell comes from the judge (autograder/judge.py), which
runs the instructor's test cells itself and captures what they print. Running them in the student's kernel
as well would only double the work (the Keras lesson's checks build and train models for about 15 s) for
verdicts that are thrown away. So nbgrader's autograde, configured by ``autograder.grade_one``, runs:

    SetAsideTestCells -> Execute -> PutBackTestCells -> (nbgrader's other steps)

Each graded test cell runs as a one-line comment in the kernel, then gets its source back, so the
autograded notebook and the feedback show the real test code, with the judge's output and verdict.
Answer cells and the lesson's other cells run as before, so feedback shows the student's own outputs.
This relies on test cells being self-contained (no later cell uses a name only a test cell defines),
which tests/test_notebooks.py checks for the course's notebooks.
"""
from __future__ import annotations

import ast

from nbgrader.preprocessors import NbGraderPreprocessor

from autograder.cells import cell_source, is_test_cell, nbgrader_meta, parse_cell

KEY = "ftlab_set_aside_source"
PLACEHOLDER = "# this test cell is run by the grader's judge, not in the student's kernel\n"


class SetAsideTestCells(NbGraderPreprocessor):
    """Before Execute: each graded test cell's source is kept in its metadata and replaced by a comment."""

    def preprocess_cell(self, cell, resources, cell_index):
        if cell.cell_type == "code" and is_test_cell(cell):
            cell.metadata[KEY] = cell.source
            cell.source = PLACEHOLDER
        return cell, resources


class PutBackTestCells(NbGraderPreprocessor):
    """After Execute: the real source is back, the metadata key gone."""

    def preprocess_cell(self, cell, resources, cell_index):
        if KEY in cell.metadata:
            cell.source = cell.metadata.pop(KEY)
        return cell, resources


def test_cell_dependencies(notebook: dict) -> list[str]:
    """Names a later non-test code cell reads that only a graded test cell defined (in notebook order), as
    ``"cell N reads NAME, defined by test cell ID"``; empty when the test cells can be set aside."""
    defined_by_test, problems = {}, []
    for number, cell in enumerate(notebook.get("cells", []), start=1):
        if cell.get("cell_type") != "code":
            continue
        try:
            tree = parse_cell(cell_source(cell))
        except (SyntaxError, ValueError):
            continue
        bound = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
        bound |= {a.asname or a.name.split(".")[0] for n in ast.walk(tree)
                  if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}
        bound |= {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
        if is_test_cell(cell):
            defined_by_test.update(dict.fromkeys(bound, nbgrader_meta(cell)["grade_id"]))
            continue
        read = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
        problems += [f"cell {number} reads {name}, defined by test cell {defined_by_test[name]}"
                     for name in sorted(read & set(defined_by_test))]
        for name in bound:
            defined_by_test.pop(name, None)
    return problems
