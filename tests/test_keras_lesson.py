"""Keras lesson: each exercise's table of answers gets the same verdict everywhere.

For every exercise a table of student answers: honest styles that must pass and wrong answers, each with
the phrase its message must contain. Every entry is judged by the visible test cell run as a kernel runs it
and by the grader's judge (the verdicts that become scores), which must agree; one honest and one wrong
answer per exercise also go through nbgrader's Validate button. One real grading run shows the reference at
full marks, the untouched notebook at zero and the seed's practice mistakes losing exactly their points.
Never import TensorFlow here (see conftest.py): the framework runs in child processes.
"""
from __future__ import annotations

import ast
import builtins
import os
import re
from pathlib import Path

import pytest

from conftest import REPO, make_course, nbgrader, run_python
from grading import (PASS, grade_id, grade_in_production, judge_verdicts, release_notebook, solutions,
                     source_notebook, table_entries, table_submissions, validate_failures, visible_verdicts,
                     with_answers)

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
            assert "checks.check_" in text, f"{grade_id(cell)} has no check"
            assert "HIDDEN TESTS" not in text, f"{grade_id(cell)}: no secret here, so the whole check is visible"


def _imported_names(tree) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            names |= {a.asname or a.name for a in node.names}
    return names


def test_test_cells_are_self_contained():
    """The judge runs each test cell with only answer-cell defs, imports and check functions."""
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


# ---- the real nbgrader CLI ------------------------------------------------------------------------
def test_student_version_fails_its_tests_cleanly(tmp_path):
    course = make_course(tmp_path / "course", [ASSIGNMENT])
    student = course / "student" / NOTEBOOK
    student.parent.mkdir()
    student.write_bytes((REPO / "release" / ASSIGNMENT / NOTEBOOK).read_bytes())
    result = nbgrader("validate", "--invert", f"student/{NOTEBOOK}", cwd=course, check=False)
    out = result.stdout + result.stderr
    assert result.returncode == 0 and "Success! The notebook does not pass any tests." in out, out[-3000:]


BUILD = "def build_base(input_shape=(96, 96, 3)):\n    return MobileNetV2(weights=mobilenet_v2_weights(), include_top=False, pooling='avg', input_shape=input_shape)\n"
TABLE = {
    "build_base": [
        ("the lesson's call", BUILD, PASS),
        ("keras.applications, keywords reordered", "def build_base(input_shape=(96, 96, 3)):\n    w = mobilenet_v2_weights()\n    return keras.applications.MobileNetV2(input_shape=input_shape, pooling='avg', include_top=False, weights=w)\n", PASS),
        ("the course helper, noise on stderr", "import sys, warnings\nfrom course.keras_tools import mobilenet_v2_base\n\ndef build_base(input_shape=(96, 96, 3)):\n    print('W0000 noise', file=sys.stderr)\n    warnings.warn('a deprecation warning', DeprecationWarning)\n    return mobilenet_v2_base(input_shape=input_shape, verbose=False)\n", PASS),
        ("max pooling", BUILD.replace("'avg'", "'max'"), "pooling='avg'"),
        ("random weights", BUILD.replace("mobilenet_v2_weights()", "None"), "did not load the weights"),
        ("a hard-coded 'imagenet' (the seed's call)", BUILD.replace("mobilenet_v2_weights()", "'imagenet'"), "cannot be downloaded"),
        ("no pooling", "def build_base(input_shape=(96, 96, 3)):\n    return MobileNetV2(weights=mobilenet_v2_weights(), include_top=False, input_shape=input_shape)\n", "feature map"),
        ("its argument ignored", BUILD.replace("input_shape=input_shape", "input_shape=(96, 96, 3)"), "ignored its argument"),
        ("frozen already", BUILD.replace("    return MobileNetV2", "    base = MobileNetV2").replace("input_shape)\n", "input_shape)\n    base.trainable = False\n    return base\n"), "every layer trainable"),
    ],
    "freeze_all": [
        ("model.trainable", "def freeze_all(model):\n    model.trainable = False\n    return model\n", PASS),
        ("every layer", "def freeze_all(model):\n    for layer in model.layers:\n        layer.trainable = False\n    return model\n", PASS),
        ("every layer, deep", "def freeze_all(model):\n    for layer in model._flatten_layers(include_self=True, recursive=True):\n        layer.trainable = False\n    return model\n", PASS),
        ("variables, not layers", "def freeze_all(model):\n    for weight in model.weights:\n        weight.trainable = False\n    return model\n", "marked the weights non-trainable"),
        ("all but the last layer", "def freeze_all(model):\n    for layer in model.layers[:-1]:\n        layer.trainable = False\n    return model\n", "last layer"),
        ("a comparison, not an assignment (the seed's no freeze)", "def freeze_all(model):\n    model.trainable == False\n    return model\n", "still trainable"),
        ("no return", "def freeze_all(model):\n    model.trainable = False\n", "should return the model"),
        ("only BatchNormalization", "def freeze_all(model):\n    for layer in model.layers:\n        if isinstance(layer, BatchNormalization):\n            layer.trainable = False\n    return model\n", "still trainable"),
    ],
    "add_head": [
        ("functional, base.output", "def add_head(base, num_classes):\n    return Model(base.input, Dense(num_classes, activation='softmax')(base.output))\n", PASS),
        ("the base called on a new input", "def add_head(base, num_classes):\n    inputs = keras.Input(base.input.shape[1:])\n    return Model(inputs, Dense(num_classes, activation='softmax')(base(inputs, training=False)))\n", PASS),
        ("Sequential", "def add_head(base, num_classes):\n    return keras.Sequential([base, Dense(num_classes, activation='softmax')])\n", PASS),
        ("Dense then Activation", "def add_head(base, num_classes):\n    scores = keras.layers.Dense(num_classes, name='new_head')(base.output)\n    return keras.Model(inputs=base.inputs, outputs=keras.layers.Activation('softmax')(scores))\n", PASS),
        ("no softmax", "def add_head(base, num_classes):\n    return Model(base.input, Dense(num_classes)(base.output))\n", "not probabilities"),
        ("always 5 classes", "def add_head(base, num_classes):\n    return Model(base.input, Dense(5, activation='softmax')(base.output))\n", "expected (None, 3)"),
        ("the base unfrozen", "def add_head(base, num_classes):\n    base.trainable = True\n    return Model(base.input, Dense(num_classes, activation='softmax')(base.output))\n", "changed trainable flags"),
        ("the head frozen too (the seed's mistake)", "def add_head(base, num_classes):\n    model = Model(base.input, Dense(num_classes, activation='softmax')(base.output))\n    model.trainable = False\n    return model\n", "no trainable weights"),
        ("an extra hidden layer", "def add_head(base, num_classes):\n    x = Dense(64, activation='relu')(base.output)\n    return Model(base.input, Dense(num_classes, activation='softmax')(x))\n", "trainable parameters"),
        ("a new base", "def add_head(base, num_classes):\n    fresh = keras.models.clone_model(base)\n    return Model(fresh.input, Dense(num_classes, activation='softmax')(fresh.output))\n", "does not use the base"),
    ],
    "unfreeze_last": [
        ("max(0, ...)", "def unfreeze_last(base, n):\n    for layer in base.layers[max(0, len(base.layers) - n):]:\n        if not isinstance(layer, BatchNormalization):\n            layer.trainable = True\n    return base\n", PASS),
        ("a guarded negative slice", "def unfreeze_last(base, n):\n    if n > 0:\n        for layer in base.layers[-n:]:\n            layer.trainable = not isinstance(layer, keras.layers.BatchNormalization)\n    return base\n", PASS),
        ("indices", "def unfreeze_last(base, n):\n    for i, layer in enumerate(base.layers):\n        if i >= len(base.layers) - n and type(layer).__name__ != 'BatchNormalization':\n            layer.trainable = True\n    return base\n", PASS),
        ("BatchNormalization too (the seed's mistake)", "def unfreeze_last(base, n):\n    for layer in base.layers[max(0, len(base.layers) - n):]:\n        layer.trainable = True\n    return base\n", "BatchNormalization layers trainable"),
        ("[-n:] (n=0 is everything)", "def unfreeze_last(base, n):\n    for layer in base.layers[-n:]:\n        if not isinstance(layer, BatchNormalization):\n            layer.trainable = True\n    return base\n", "-0:"),
        ("the first n", "def unfreeze_last(base, n):\n    for layer in base.layers[:n]:\n        if not isinstance(layer, BatchNormalization):\n            layer.trainable = True\n    return base\n", "before the last"),
        ("a negative start", "def unfreeze_last(base, n):\n    if n:\n        for layer in base.layers[len(base.layers) - n:]:\n            if not isinstance(layer, BatchNormalization):\n                layer.trainable = True\n    return base\n", "negative"),
        ("one too many", "def unfreeze_last(base, n):\n    for layer in base.layers[max(0, len(base.layers) - n - 1):]:\n        if not isinstance(layer, BatchNormalization):\n            layer.trainable = True\n    return base\n", "before the last"),
        ("no return", "def unfreeze_last(base, n):\n    for layer in base.layers[max(0, len(base.layers) - n):]:\n        if not isinstance(layer, BatchNormalization):\n            layer.trainable = True\n", "should return base"),
    ],
    "compile_for_fine_tuning": [
        ("strings", "def compile_for_fine_tuning(model, lr=1e-5):\n    model.compile(optimizer=Adam(learning_rate=lr), loss='categorical_crossentropy', metrics=['accuracy'])\n    return model\n", PASS),
        ("objects", "def compile_for_fine_tuning(model, lr=1e-5):\n    model.compile(optimizer=keras.optimizers.Adam(learning_rate=lr), loss=keras.losses.CategoricalCrossentropy(),\n                  metrics=[keras.metrics.CategoricalAccuracy(name='accuracy')])\n    return model\n", PASS),
        ("a positional rate", "def compile_for_fine_tuning(model, lr=1e-5):\n    model.compile(Adam(lr), 'categorical_crossentropy', metrics=['acc'])\n    return model\n", PASS),
        ("no recompile (the seed's mistake)", "def compile_for_fine_tuning(model, lr=1e-5):\n    if model.compiled:\n        model.optimizer.learning_rate.assign(lr)\n    else:\n        model.compile(optimizer=Adam(learning_rate=lr), loss='categorical_crossentropy', metrics=['accuracy'])\n    return model\n", "compile(...) again"),
        ("Adam's default rate (the seed's high rate)", "def compile_for_fine_tuning(model, lr=1e-5):\n    model.compile(optimizer=Adam(), loss='categorical_crossentropy', metrics=['accuracy'])\n    return model\n", "wreck the pre-trained features"),
        ("SGD", "def compile_for_fine_tuning(model, lr=1e-5):\n    model.compile(optimizer=keras.optimizers.SGD(learning_rate=lr), loss='categorical_crossentropy', metrics=['accuracy'])\n    return model\n", "the lesson uses Adam"),
        ("sparse labels", "def compile_for_fine_tuning(model, lr=1e-5):\n    model.compile(optimizer=Adam(learning_rate=lr), loss='sparse_categorical_crossentropy', metrics=['accuracy'])\n    return model\n", "categorical_crossentropy"),
        ("no metrics", "def compile_for_fine_tuning(model, lr=1e-5):\n    model.compile(optimizer=Adam(learning_rate=lr), loss='categorical_crossentropy')\n    return model\n", "metrics=['accuracy']"),
        ("everything unfrozen first", "def compile_for_fine_tuning(model, lr=1e-5):\n    model.trainable = True\n    model.compile(optimizer=Adam(learning_rate=lr), loss='categorical_crossentropy', metrics=['accuracy'])\n    return model\n", "changed trainable flags"),
    ],
}


def test_each_table_has_five_wrong_answers_and_three_honest_styles():
    assert set(TABLE) == set(EXERCISES)
    for exercise, rows in TABLE.items():
        honest = [row for row in rows if row[2] == PASS]
        assert len(honest) >= 3 and len(rows) - len(honest) >= 5, exercise


ENTRIES = [(exercise, label, expected) for exercise, label, _, expected in table_entries(TABLE)]


@pytest.fixture(scope="module")
def visible():
    return visible_verdicts(ASSIGNMENT, TABLE)


@pytest.fixture(scope="module")
def judged(tmp_path_factory):
    notebooks, where = table_submissions(ASSIGNMENT, TABLE)
    return judge_verdicts(ASSIGNMENT, notebooks, tmp_path_factory.mktemp("keras_table")), where


def agrees(verdict: dict, expected: str) -> bool:
    return verdict["passed"] if expected == PASS else (not verdict["passed"] and expected in verdict["message"])


@pytest.mark.parametrize("exercise,label,expected", ENTRIES, ids=[f"{e}-{label}" for e, label, _ in ENTRIES])
def test_the_visible_check_and_the_grader_give_the_stated_verdict(visible, judged, exercise, label, expected):
    verdicts, where = judged
    student, check = where[(exercise, label)]
    seen = visible[(exercise, label)]
    graded = verdicts[student][check]
    assert agrees(seen, expected), f"visible check: {seen}"
    assert agrees(graded, expected), f"grader: {graded}"
    if expected != PASS:
        assert graded["message"][:60] in seen["message"], (graded["message"], seen["message"])  # the check's own words


def test_validate_gives_the_same_verdicts(tmp_path):
    """The students' Validate button: one honest answer per exercise passes everything; one wrong answer per
    exercise fails exactly those exercises' cells, with the check's message."""
    honest = {e: next(code for _, code, x in rows if x == PASS) for e, rows in TABLE.items()}
    wrong = {e: next((code, x) for _, code, x in rows if x != PASS) for e, rows in TABLE.items()}
    failed, out = validate_failures(ASSIGNMENT, honest, tmp_path / "honest")
    assert not failed and "Success! Your notebook passes all the tests." in out, out[-3000:]
    failed, out = validate_failures(ASSIGNMENT, {e: code for e, (code, _) in wrong.items()}, tmp_path / "wrong")
    assert failed == set(EXERCISES), out[-3000:]
    for _, expected in wrong.values():
        assert expected in out, expected


# ---- one real grading run: full marks, zero, and the seed's practice mistakes ----------------------------
def row(exercise, label):
    return next(code for name, code, _ in TABLE[exercise] if name == label)


SEED_MISTAKES = [  # the seed's common mistakes, in two submissions (two of them are in the same exercise)
    {"freeze_all": row("freeze_all", "a comparison, not an assignment (the seed's no freeze)"),
     "add_head": row("add_head", "the head frozen too (the seed's mistake)"),
     "unfreeze_last": row("unfreeze_last", "BatchNormalization too (the seed's mistake)"),
     "compile_for_fine_tuning": row("compile_for_fine_tuning", "no recompile (the seed's mistake)")},
    {"compile_for_fine_tuning": row("compile_for_fine_tuning", "Adam's default rate (the seed's high rate)"),
     "build_base": row("build_base", "a hard-coded 'imagenet' (the seed's call)")},
]


@pytest.fixture(scope="module")
def production(tmp_path_factory):
    student = release_notebook(ASSIGNMENT)
    submissions = {"reference": with_answers(student, solutions(ASSIGNMENT)), "untouched": student}
    for k, answers in enumerate(SEED_MISTAKES):
        submissions[f"seed_mistakes_{k}"] = with_answers(student, {**solutions(ASSIGNMENT), **answers})
    return grade_in_production(ASSIGNMENT, submissions, tmp_path_factory.mktemp("keras_grading"))


def test_reference_solution_gets_full_marks(production):
    assert production[0]["reference"] == full_marks_except()


def test_untouched_student_notebook_gets_zero(production):
    assert production[0]["untouched"] == full_marks_except(*EXERCISES)


@pytest.mark.parametrize("k", range(len(SEED_MISTAKES)))
def test_the_seeds_mistakes_lose_exactly_the_points_of_their_checks(production, k):
    assert production[0][f"seed_mistakes_{k}"] == full_marks_except(*SEED_MISTAKES[k])


# ---- course.keras_tools.build_before_fit ------------------------------------------------------------------
def test_build_before_fit_makes_the_first_fit_trace_its_step_once_and_changes_no_weight():
    """What the lesson says of it: left to ``fit``, Keras traces the training step twice (its variables are
    created during the first trace); after ``build_before_fit`` once, and no weight has moved."""
    result = run_python("""
        import numpy as np
        from tensorflow import keras
        from course.keras_tools import as_dataset, build_before_fit

        def first_fit(prepare):
            keras.utils.set_random_seed(0)
            inputs = keras.Input((8, 8, 3))
            x = keras.layers.BatchNormalization()(keras.layers.Conv2D(4, 3)(inputs))
            x = keras.layers.GlobalAveragePooling2D()(x)
            model = keras.Model(inputs, keras.layers.Dense(5, activation="softmax")(x))
            model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="categorical_crossentropy", metrics=["accuracy"])
            X = np.random.default_rng(0).random((20, 8, 8, 3), dtype="float32")
            y = np.eye(5, dtype="float32")[np.arange(20) % 5]
            before = [w.numpy().copy() for w in model.weights]
            if prepare:
                build_before_fit(model, X, y)
            unchanged = all(np.array_equal(a, w.numpy()) for a, w in zip(before, model.weights))
            traces, step = [], model.train_step
            model.train_step = lambda data: (traces.append(1), step(data))[1]
            model.fit(as_dataset(X, y, 10), epochs=2, verbose=0)
            return len(traces), unchanged

        print("traces", first_fit(False), first_fit(True))
    """)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "traces (2, True) (1, True)", result.stdout
