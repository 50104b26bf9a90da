"""What the grader reads in a notebook: nbgrader's cell metadata, and which statements of a cell count.

    nb = read_notebook(path)                       # NotebookError with a reason when it is not a notebook
    is_test_cell(cell), is_answer_cell(cell), nbgrader_meta(cell)["grade_id"]
    plan = plan_submission(source_nb, submitted_nb)   # what the judge and the runners get (see below)

One place for these rules, used by the judge (``autograder.judge``), the kernel's test-cell set-aside
(``autograder.set_aside``), the notebook hygiene check and the tests.

Which statements of a cell count (``choose_statements``): ``def``, ``class``, ``import``/``from ...
import`` and assignments of a literal to plain names (``answer_q1 = "B"``, ``n = 3``). Every other
top-level statement of an answer cell is ignored by the grader (a note says which), because graded code
must not depend on the order in which a notebook happened to be run.
"""
from __future__ import annotations

import ast
import json
from pathlib import Path

# ---- reading notebooks --------------------------------------------------------------------------------
def nbgrader_meta(cell) -> dict:
    meta = cell.get("metadata") if isinstance(cell, dict) else None
    value = meta.get("nbgrader") if isinstance(meta, dict) else None
    return value if isinstance(value, dict) else {}


def cell_source(cell) -> str:
    source = cell.get("source", "") if isinstance(cell, dict) else ""
    if isinstance(source, list):
        return "".join(s for s in source if isinstance(s, str))
    return source if isinstance(source, str) else ""


def code_cells(notebook) -> list:
    cells = notebook.get("cells") if isinstance(notebook, dict) else None
    return [c for c in cells if isinstance(c, dict) and c.get("cell_type") == "code"] if isinstance(cells, list) else []


def is_test_cell(cell) -> bool:
    meta = nbgrader_meta(cell)
    return bool(meta.get("grade")) and not meta.get("solution") and isinstance(meta.get("grade_id"), str)


def is_answer_cell(cell) -> bool:
    meta = nbgrader_meta(cell)
    return bool(meta.get("solution")) and isinstance(meta.get("grade_id"), str)


def graded_test_ids(notebook) -> list[str]:
    """grade ids of every graded test cell (code or markdown) in the order of the notebook."""
    cells = notebook.get("cells", []) if isinstance(notebook, dict) else []
    return [nbgrader_meta(c)["grade_id"] for c in cells if is_test_cell(c)]


# ---- choosing statements ------------------------------------------------------------------------------
def parse_cell(source: str) -> ast.Module:
    """The cell as Python; IPython syntax (``%magic``, ``!cmd``) is turned into calls first if needed."""
    try:
        return ast.parse(source)
    except SyntaxError:
        from IPython.core.inputtransformer2 import TransformerManager
        return ast.parse(TransformerManager().transform_cell(source))


def literal_target(node):
    """A plain name -> "name"; a tuple/list of plain names -> [...]; anything else (attributes,
    subscripts, starred) -> None."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, (ast.Tuple, ast.List)):
        parts = [literal_target(e) for e in node.elts]
        return None if any(p is None for p in parts) else parts
    return None


def target_names(target) -> list[str]:
    return [target] if isinstance(target, str) else [n for t in target for n in target_names(t)]


def is_literal(node) -> bool:
    try:
        ast.literal_eval(node)
        return True
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False


def statement_source(source: str, node: ast.stmt) -> tuple[str, int]:
    """Exact source text of one top-level statement (decorators included) and its first line number."""
    first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
    lines = source.splitlines(keepends=True)
    segment = ast.get_source_segment(source, node) or ""
    if first < node.lineno:
        segment = "".join(lines[first - 1:node.lineno - 1]) + lines[node.lineno - 1][:node.col_offset] + segment
    return segment, first


def choose_statements(source: str) -> tuple[list[dict], list[str]]:
    """The statements of one cell that count, and notes on those that are ignored.

    Kept: def, class, import/from-import, and assignments of literals to plain names (bound with
    ``ast.literal_eval``: no code runs for them).
    """
    try:
        tree = parse_cell(source)
    except (SyntaxError, ValueError) as error:
        return [], [f"the cell does not parse ({error.msg if isinstance(error, SyntaxError) else error}); nothing in it counts"]
    chosen, notes = [], []
    for node in tree.body:
        line = node.lineno
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            text, first = statement_source(source, node)
            what = "class" if isinstance(node, ast.ClassDef) else "def"
            chosen.append({"kind": "code", "what": what, "source": text, "line": first, "names": [node.name]})
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            if isinstance(node, ast.ImportFrom) and node.level:
                notes.append(f"line {line}: relative import ignored")
                continue
            star = any(a.name == "*" for a in node.names)
            names = [] if star else [(a.asname or a.name.split(".")[0]) for a in node.names]
            text, first = statement_source(source, node)
            chosen.append({"kind": "code", "what": "import", "source": text, "line": first, "names": names,
                           "star": star, "module": modules[0]})
        elif isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None and is_literal(node.value):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            parsed = [literal_target(t) for t in targets]
            if any(p is None for p in parsed) or any(n.startswith("__") for p in parsed for n in target_names(p)):
                notes.append(f"line {line}: `{first_line(source, node)}` ignored (only plain names take literals)")
                continue
            value = ast.get_source_segment(source, node.value) or ast.unparse(node.value)
            for target in parsed:
                chosen.append({"kind": "literal", "target": target, "value": value, "line": line,
                               "names": target_names(target)})
        elif isinstance(node, ast.Pass) or (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)):
            continue
        else:
            notes.append(f"line {line}: `{first_line(source, node)}` ignored (only def, class, import and "
                         f"literal assignments count)")
    return chosen, notes


def first_line(source: str, node: ast.stmt) -> str:
    text = (ast.get_source_segment(source, node) or "").strip().splitlines()
    return (text[0][:70] + ("..." if len(text[0]) > 70 or len(text) > 1 else "")) if text else "?"


def imported_modules(source: str) -> list[str]:
    """Absolute module names imported anywhere in ``source`` (for preloading)."""
    try:
        tree = parse_cell(source)
    except (SyntaxError, ValueError):
        return []
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.append(node.module)
            names += [f"{node.module}.{a.name}" for a in node.names if a.name != "*" and node.module.startswith("course")]
    return names


# ---- what the judge and the runners get -----------------------------------------------------------------
class NotebookError(Exception):
    """A notebook could not be read; the message says why."""


def read_notebook(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise NotebookError(f"{Path(path).name} is not a readable notebook: {error}") from None
    if not isinstance(data, dict) or not isinstance(data.get("cells"), list):
        raise NotebookError(f"{Path(path).name} is not a notebook (no list of cells)")
    return data


def plan_submission(source_nb: dict, submitted_nb: dict | None) -> dict:
    """What grading one notebook needs, read from the instructor's notebook and the submission.

    ``program``: blocks of chosen statements, in order: the instructor's non-test cells (imports, helper
    definitions, literals: what the released notebook shows too) and the student's answer cells and added
    cells. A runner loads the program; it never gets ``tests``, the instructor's test cells with their
    hidden tests, which only the judge runs. ``preload``: the modules to import before any of it.
    """
    source_cells = code_cells(source_nb)
    answer_ids = [nbgrader_meta(c)["grade_id"] for c in source_cells if is_answer_cell(c)]
    instructor_ids = {nbgrader_meta(c).get("grade_id") for c in source_nb.get("cells", []) if isinstance(c, dict)} - {None}
    program, tests, preload = [], [], ["numpy", "course.checks.wire"]
    # names the answer cells define: an instructor cell never supplies them (a demo cell defining
    # `freeze_all` must not stand in for a student's missing or wrong one)
    answer_names = {name for c in source_cells if is_answer_cell(c)
                    for statement in choose_statements(cell_source(c))[0] for name in statement["names"]}
    instructor_sources = set()
    answers_since_last_test = []
    for cell in source_cells:
        text = cell_source(cell)
        if is_answer_cell(cell):
            answers_since_last_test.append(nbgrader_meta(cell)["grade_id"])
        if is_test_cell(cell):
            tests.append({"grade_id": nbgrader_meta(cell)["grade_id"], "source": text,
                          "answer_cells": answers_since_last_test})
            answers_since_last_test = []
            preload += imported_modules(text)
        elif not is_answer_cell(cell):
            instructor_sources.add(text.strip())
            statements, _ = choose_statements(text)
            statements = [st for st in statements if not set(st["names"]) & answer_names]
            program.append({"owner": "instructor", "statements": statements})
            preload += [s["module"] for s in statements if s.get("module")]
            preload += [m for s in statements if s.get("module") for m in imported_modules(s["source"])]
    # the student's cells, in the submission's order: answer cells by grade id, and cells the student added
    for number, cell in enumerate(code_cells(submitted_nb) if submitted_nb else []):
        grade_id = nbgrader_meta(cell).get("grade_id")
        text = cell_source(cell)
        if grade_id in answer_ids:
            name = grade_id
        elif grade_id in instructor_ids or text.strip() in instructor_sources or not text.strip():
            continue
        else:
            name = f"added cell {number + 1}"
        statements, notes = choose_statements(text)
        program.append({"owner": "student", "cell": name, "statements": statements, "ignored": notes})
    seen, ordered = set(), []
    for module in preload:
        if module and module not in seen and not module.startswith("."):
            seen.add(module)
            ordered.append(module)
    return {"program": program, "tests": tests, "preload": ordered}


def preload_for(source_notebooks: list[Path]) -> list[str]:
    """The modules the fork server imports once for these instructor notebooks (``autograder.server``)."""
    modules = []
    for path in source_notebooks:
        modules += [m for m in plan_submission(read_notebook(Path(path)), None)["preload"] if m not in modules]
    return modules


TORCH_FAMILY = ("torch", "torchvision", "course.torch_tools", "course.checks.torch")
TF_FAMILY = ("tensorflow", "keras", "tf_keras", "course.keras_tools", "course.checks.keras")


def import_order(modules: list[str]) -> list[str]:
    """``modules`` in a safe order: the torch family first (torchvision after TensorFlow crashes Python)."""
    ordered = [m for m in modules if m.startswith(TORCH_FAMILY)] + \
              [m for m in modules if not m.startswith(TORCH_FAMILY + TF_FAMILY)] + \
              [m for m in modules if m.startswith(TF_FAMILY) and not m.startswith(TORCH_FAMILY)]
    if any(m.startswith(TORCH_FAMILY) for m in ordered) and any(m.startswith(TF_FAMILY) for m in ordered):
        ordered.insert(0, "torchvision")
    return ordered


