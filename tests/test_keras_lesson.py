"""The Keras lesson (issue 3): its exercise contract, its student version, and its grading through the
real nbgrader CLI.

This process never imports TensorFlow: the notebooks run in nbgrader's kernels. One `grade(...)` call
(one `nbgrader autograde` run) grades every submission below; the lesson runs in quick mode there
(NBGRADER_EXECUTION is set), a few training steps per run.
"""
from __future__ import annotations

import ast
import builtins
import os
import re
from pathlib import Path

import pytest

from conftest import REPO, make_course, nbgrader
from grading import grade, grade_id, release_notebook, solutions, source_notebook, with_answers

ASSIGNMENT = "keras_lesson"
NOTEBOOK = "fine_tuning_keras.ipynb"
EXERCISES = ["build_base", "freeze_all", "add_head", "unfreeze_last", "compile_for_fine_tuning"]


def source_of(cell) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def meta(cell) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


def points() -> dict[str, float]:
    """Points of each test cell, read from the instructor notebook."""
    return {grade_id(c): meta(c)["points"] for c in source_notebook(ASSIGNMENT)["cells"] if meta(c).get("grade")}


def full_marks_except(*broken: str) -> dict[str, tuple]:
    return {gid: (0.0 if gid[len("correct_"):] in broken else pts, pts) for gid, pts in points().items()}


# ---- the contract ---------------------------------------------------------------------------------
def test_exercises_have_answer_and_test_cells_with_the_agreed_ids():
    cells = source_notebook(ASSIGNMENT)["cells"]
    answers = [grade_id(c) for c in cells if meta(c).get("solution")]
    tests = [grade_id(c) for c in cells if meta(c).get("grade")]
    assert answers == EXERCISES
    assert tests == [f"correct_{name}" for name in EXERCISES]
    for cell in cells:
        if meta(cell).get("grade"):
            text = source_of(cell)
            assert meta(cell)["points"] > 0 and meta(cell)["locked"]
            visible, _, hidden = text.partition("### BEGIN HIDDEN TESTS")
            assert "checks." in visible, f"{grade_id(cell)} has no visible check"
            assert "checks." in hidden and "### END HIDDEN TESTS" in hidden, f"{grade_id(cell)} has no hidden check"


def _imported_names(tree) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            names |= {a.asname or a.name for a in node.names}
    return names


def test_test_cells_are_self_contained():
    """The independent checker runs each test cell with only answer-cell defs, imports and check functions."""
    cells = [c for c in source_notebook(ASSIGNMENT)["cells"] if c["cell_type"] == "code"]
    allowed = set(dir(builtins)) | set(EXERCISES)
    for cell in cells:
        if not meta(cell).get("grade"):
            allowed |= _imported_names(ast.parse(source_of(cell)))
    for cell in cells:
        if meta(cell).get("grade"):
            tree = ast.parse(source_of(cell))
            used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
            foreign = used - allowed - _imported_names(tree)
            assert not foreign, f"{grade_id(cell)} uses lesson variables {sorted(foreign)}"


def _course_modules_imported_by(code: str) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def test_notebook_never_imports_torch_next_to_tensorflow():
    """`import tensorflow` then `import torchvision` segfaults: no cell, and no course module the lesson
    imports (followed through its own imports), may bring in torch."""
    todo = set()
    for nb in (source_notebook(ASSIGNMENT), release_notebook(ASSIGNMENT)):
        for cell in nb["cells"]:
            if cell["cell_type"] == "code":
                todo |= _course_modules_imported_by(re.sub(r"^\s*[%!].*$", "", source_of(cell), flags=re.M))
    assert any(m.startswith("tensorflow") for m in todo)
    seen = set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        assert module.split(".")[0] not in {"torch", "torchvision"} and module != "course.torch_tools", \
            f"the Keras lesson imports {module}"
        path = REPO / Path(*module.split("."))
        for candidate in (path.with_suffix(".py"), path / "__init__.py"):
            if module.startswith("course") and candidate.exists():
                todo |= _course_modules_imported_by(candidate.read_text())


def test_student_version_leaks_no_solution():
    student = release_notebook(ASSIGNMENT)
    text = "\n".join(source_of(c) for c in student["cells"])
    assert "BEGIN SOLUTION" not in text and "HIDDEN TESTS" not in text
    for name, code in solutions(ASSIGNMENT).items():
        body = code.split("### BEGIN SOLUTION")[1].split("### END SOLUTION")[0].strip()
        assert body not in text, f"the solution of {name} is in the student version"
    for cell in student["cells"]:
        if meta(cell).get("grade"):
            assert "_behaviour" not in source_of(cell), "a hidden check is visible"


# ---- the real nbgrader CLI ------------------------------------------------------------------------
def test_instructor_notebook_passes_validate(tmp_path):
    course = make_course(tmp_path / "course", [ASSIGNMENT])
    result = nbgrader("validate", f"source/{ASSIGNMENT}/{NOTEBOOK}", cwd=course, check=False)
    out = result.stdout + result.stderr
    assert result.returncode == 0 and "Success! Your notebook passes all the tests." in out, out[-3000:]


def test_student_version_fails_its_tests_cleanly(tmp_path):
    course = make_course(tmp_path / "course", [ASSIGNMENT])
    student = course / "student" / NOTEBOOK
    student.parent.mkdir()
    student.write_bytes((REPO / "release" / ASSIGNMENT / NOTEBOOK).read_bytes())
    result = nbgrader("validate", "--invert", f"student/{NOTEBOOK}", cwd=course, check=False)
    out = result.stdout + result.stderr
    assert result.returncode == 0 and "Success! The notebook does not pass any tests." in out, out[-3000:]


# Submissions: each answer is a whole answer cell, by grade id.
ALTERNATIVE_STYLES = {  # correct, written differently, and noisy on stderr: full marks
    "build_base": '''
import sys
import warnings
from course.keras_tools import mobilenet_v2_base

def build_base(input_shape=(96, 96, 3)):
    print("W0000 tensorflow noise on stderr", file=sys.stderr)
    warnings.warn("a deprecation warning from somewhere", DeprecationWarning)
    return mobilenet_v2_base(input_shape=input_shape, verbose=False)
''',
    "freeze_all": '''
import sys
import warnings

def freeze_all(model):
    for layer in model.layers:
        layer.trainable = False
    warnings.warn("freezing: every layer now", UserWarning)
    print("E0000 more noise", file=sys.stderr)
    return model
''',
    "add_head": '''
def add_head(base, num_classes):
    scores = keras.layers.Dense(num_classes, name="new_head")(base.output)
    probabilities = keras.layers.Activation("softmax")(scores)
    return keras.Model(inputs=base.inputs, outputs=probabilities)
''',
    "unfreeze_last": '''
def unfreeze_last(base, n):
    base.trainable = True
    for layer in base.layers[:-n]:
        layer.trainable = False
    for layer in base.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
''',
    "compile_for_fine_tuning": '''
def compile_for_fine_tuning(model, lr=1e-5):
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=lr),
                  loss=keras.losses.CategoricalCrossentropy(),
                  metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")])
    return model
''',
}

MISTAKES = {
    "freezing_nothing": ("freeze_all", '''
def freeze_all(model):
    model.trainable == False
    return model
'''),
    "freezing_the_head_too": ("add_head", '''
def add_head(base, num_classes):
    model = Model(base.input, Dense(num_classes, activation="softmax")(base.output))
    model.trainable = False
    return model
'''),
    "unfreezing_batchnorm": ("unfreeze_last", '''
def unfreeze_last(base, n):
    for layer in base.layers[-n:]:
        layer.trainable = True
    return base
'''),
    "not_recompiling": ("compile_for_fine_tuning", '''
def compile_for_fine_tuning(model, lr=1e-5):
    if model.compiled:                          # already compiled: just lower the learning rate
        model.optimizer.learning_rate.assign(lr)
    else:
        model.compile(optimizer=Adam(learning_rate=lr), loss="categorical_crossentropy", metrics=["accuracy"])
    return model
'''),
    "high_learning_rate": ("compile_for_fine_tuning", '''
def compile_for_fine_tuning(model, lr=1e-5):
    model.compile(optimizer=Adam(), loss="categorical_crossentropy", metrics=["accuracy"])
    return model
'''),
    "freezing_variables_not_layers": ("freeze_all", '''
def freeze_all(model):
    for weight in model.weights:
        weight.trainable = False
    return model
'''),
    "random_weights": ("build_base", '''
def build_base(input_shape=(96, 96, 3)):
    return MobileNetV2(weights=None, include_top=False, pooling="avg", input_shape=input_shape)
'''),
    "off_by_one": ("unfreeze_last", '''
def unfreeze_last(base, n):
    for layer in base.layers[-n - 1:]:
        if not isinstance(layer, BatchNormalization):
            layer.trainable = True
'''),
    "five_classes_always": ("add_head", '''
def add_head(base, num_classes):
    return Model(base.input, Dense(5, activation="softmax")(base.output))
'''),
}
# Mistakes graded together: each submission breaks three different exercises, the rest is the reference,
# so each one also shows that the exercises it leaves alone keep their full marks.
MISTAKE_SUBMISSIONS = [
    ("freezing_nothing", "freezing_the_head_too", "unfreezing_batchnorm"),
    ("not_recompiling", "freezing_variables_not_layers", "off_by_one"),
    ("high_learning_rate", "random_weights", "five_classes_always"),
]


def broken_by(combo) -> set[str]:
    """The exercises a combination of mistakes breaks. Under FTLAB_WEIGHTS=none the pre-trained weights *are*
    random, so `random_weights` is then a correct answer (the suite runs with FTLAB_WEIGHTS=course)."""
    weights_none = os.environ.get("FTLAB_WEIGHTS") == "none"
    return {MISTAKES[m][0] for m in combo if not (m == "random_weights" and weights_none)}


@pytest.fixture(scope="module")
def scores(tmp_path_factory):
    reference = solutions(ASSIGNMENT)
    student = release_notebook(ASSIGNMENT)
    submissions = {
        "reference": with_answers(student, reference),
        "untouched": student,
        "other_styles": with_answers(student, {**reference, **ALTERNATIVE_STYLES}),
    }
    for combo in MISTAKE_SUBMISSIONS:
        answers = dict(reference)
        for mistake in combo:
            exercise, code = MISTAKES[mistake]
            answers[exercise] = code
        submissions["+".join(combo)] = with_answers(student, answers)
    return grade(ASSIGNMENT, submissions, tmp_path_factory.mktemp("keras_grading"))


def test_reference_solution_gets_full_marks(scores):
    assert scores["reference"] == full_marks_except()


def test_untouched_student_notebook_gets_zero(scores):
    assert scores["untouched"] == full_marks_except(*EXERCISES)


def test_other_correct_styles_and_stderr_noise_lose_nothing(scores):
    assert scores["other_styles"] == full_marks_except()


@pytest.mark.parametrize("combo", MISTAKE_SUBMISSIONS, ids="+".join)
def test_each_mistake_loses_exactly_its_exercise(scores, combo):
    assert scores["+".join(combo)] == full_marks_except(*broken_by(combo))
