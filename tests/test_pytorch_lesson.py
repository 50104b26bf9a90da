"""PyTorch lesson (issue 4): the checks judge behaviour, and the real nbgrader CLI grades the notebook.

The checks of course/checks/torch.py are first exercised directly on real torchvision models (seconds).
Then one `nbgrader autograde` run grades the reference, the untouched student notebook and submissions
that each carry one of the issue's common mistakes: every mistake must cost exactly the points of the
test cell that catches it. Points are read from the instructor notebook, never typed here.
"""
from __future__ import annotations

import json
import shutil
import warnings

import pytest
import torch
from torch import nn

from conftest import REPO, make_course, nbgrader, run_python
from grading import grade, grade_id, notebook_name, release_notebook, solutions, source_notebook, with_answers

from course.checks import torch as checks

ASSIGNMENT = "pytorch_lesson"
EXERCISES = ["count_trainable", "freeze_all", "replace_head", "unfreeze_last", "make_optimizer"]
STATED_COUNTS = ["count_after_freeze", "count_after_head", "count_after_unfreeze"]


def points() -> dict[str, float]:
    """grade_id -> points of every autograded test cell, from the instructor notebook."""
    return {grade_id(c): c["metadata"]["nbgrader"]["points"] for c in source_notebook(ASSIGNMENT)["cells"]
            if c.get("metadata", {}).get("nbgrader", {}).get("grade")}


def define(code: str, name: str):
    """The function ``name`` defined by an answer cell's code, in a namespace like the lesson's."""
    namespace = {"torch": torch, "nn": nn}
    exec(code, namespace)
    return namespace[name]


# ---------------------------------------------------------------- answers, right and wrong

FREEZE_LOOP = "def freeze_all(model):\n    for p in model.parameters():\n        p.requires_grad = False\n    return model\n"
FREEZE_METHOD = "def freeze_all(model):\n    return model.requires_grad_(False)\n"
FREEZE_KERAS = "def freeze_all(model):\n    model.trainable = False\n    return model\n"
FREEZE_TYPO = "def freeze_all(model):\n    for p in model.parameters():\n        p.require_grad = False\n    return model\n"
FREEZE_FEATURES = ("def freeze_all(model):\n    for p in model.features.parameters():\n        p.requires_grad = False\n"
                   "    return model\n")
OPTIMIZER_LIST = ("def make_optimizer(model, lr):\n"
                  "    return torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)\n")
OPTIMIZER_FILTER = ("def make_optimizer(model, lr):\n    return torch.optim.SGD(filter(lambda p: p.requires_grad, "
                    "model.parameters()), lr=lr, momentum=0.9, weight_decay=1e-4)\n")
OPTIMIZER_ALL = ("def make_optimizer(model, lr):\n"
                 "    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)\n")
OPTIMIZER_HEAD = "def make_optimizer(model, lr):\n    return torch.optim.Adam(model.classifier.parameters(), lr=lr)\n"
COUNT_LEN = "def count_trainable(model):\n    return len([p for p in model.parameters() if p.requires_grad])\n"
COUNT_NUMEL = "def count_trainable(model):\n    return sum(p.numel() for p in model.parameters() if p.requires_grad)\n"
COUNT_ALL = "def count_trainable(model):\n    return len(list(model.parameters()))\n"
# Correct, and PyTorch warns on stderr (torch.tensor() of a tensor): a UserWarning must cost nothing.
HEAD_WITH_WARNING = ("def replace_head(model, num_classes):\n"
                     "    head = nn.Linear(model.classifier[-1].in_features, num_classes)\n"
                     "    head.weight = nn.Parameter(torch.tensor(head.weight))\n"
                     "    model.classifier[-1] = head\n    return model\n")
HEAD_FIXED_SIZE = "def replace_head(model, num_classes):\n    model.classifier[-1] = nn.Linear(1280, 5)\n    return model\n"
HEAD_APPENDED = ("def replace_head(model, num_classes):\n"
                 "    model.classifier.append(nn.Linear(model.classifier[-1].out_features, num_classes))\n    return model\n")
UNFREEZE_SLICE = "def unfreeze_last(model, n):\n    model.features[-n:].requires_grad_(True)\n"
UNFREEZE_FIRST = ("def unfreeze_last(model, n):\n    for p in model.features[:n].parameters():\n"
                  "        p.requires_grad = True\n")
UNFREEZE_TENSORS = ("def unfreeze_last(model, n):\n    for p in list(model.parameters())[-n - 2:]:\n"
                    "        p.requires_grad = True\n")


@pytest.mark.parametrize("check, name, code", [
    (checks.check_freeze_all, "freeze_all", FREEZE_LOOP),
    (checks.check_freeze_all, "freeze_all", FREEZE_METHOD),
    (checks.check_freeze_all_step, "freeze_all", FREEZE_METHOD),
    (checks.check_count_trainable, "count_trainable", COUNT_LEN),
    (checks.check_unfreeze_last, "unfreeze_last", UNFREEZE_SLICE),
    (checks.check_make_optimizer, "make_optimizer", OPTIMIZER_LIST),
    (checks.check_make_optimizer, "make_optimizer", OPTIMIZER_FILTER),
])
def test_honest_answers_in_any_style_pass(check, name, code):
    check(define(code, name))


@pytest.mark.parametrize("check, name, code, says", [
    (checks.check_freeze_all, "freeze_all", FREEZE_KERAS, "`model.trainable`"),
    (checks.check_freeze_all, "freeze_all", FREEZE_TYPO, "`p.require_grad` (missing the 's')"),
    (checks.check_freeze_all, "freeze_all", FREEZE_FEATURES, "froze only `model.features`"),
    (checks.check_freeze_all, "freeze_all", "def freeze_all(model):\n    model.requires_grad_(False)\n", "must return the model"),
    (checks.check_freeze_all, "freeze_all", "def freeze_all(model):\n    return model.eval()\n", "model.eval()"),
    (checks.check_make_optimizer, "make_optimizer", OPTIMIZER_ALL, "built over all parameters"),
    (checks.check_make_optimizer, "make_optimizer", OPTIMIZER_HEAD, "misses 12 trainable tensors"),
    (checks.check_count_trainable, "count_trainable", COUNT_NUMEL, "counted numbers (p.numel())"),
    (checks.check_count_trainable, "count_trainable", COUNT_ALL, "counted every parameter tensor"),
    (checks.check_replace_head, "replace_head", HEAD_FIXED_SIZE, "use the `num_classes` argument"),
    (checks.check_replace_head, "replace_head", HEAD_APPENDED, "appended a layer"),
    (checks.check_unfreeze_last, "unfreeze_last", UNFREEZE_FIRST, "FIRST 1 blocks"),
    (checks.check_unfreeze_last, "unfreeze_last", UNFREEZE_TENSORS, "parameter TENSORS"),
])
def test_each_mistake_fails_with_a_message_that_names_it(check, name, code, says):
    with pytest.raises(AssertionError) as failure:
        check(define(code, name))
    assert says in str(failure.value)


def test_a_correct_answer_that_makes_pytorch_warn_passes():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        checks.check_replace_head(define(HEAD_WITH_WARNING, "replace_head"))
    assert any(issubclass(w.category, UserWarning) for w in caught), "the answer should really make PyTorch warn"


@pytest.mark.parametrize("check, right, wrong", [
    (checks.check_count_after_freeze, lambda: checks._count(checks._freeze(checks.new_model())), 158),
    (checks.check_count_after_head, lambda: checks._count(checks._model_with_new_head(5)), 0),
])
def test_stated_counts_are_judged_against_the_model_the_check_builds(check, right, wrong):
    check(right())
    with pytest.raises(AssertionError):
        check(wrong)
    with pytest.raises(AssertionError, match="whole number"):
        check("0")


def test_checks_cannot_be_fooled_by_patching_sum_parameters_or_requires_grad():
    """A 'freeze_all' that freezes nothing but patches builtins and torch after the checks were imported."""
    result = run_python("""
        import builtins, torch
        import course.checks.torch as checks
        def freeze_all(model):
            builtins.sum = lambda *args, **kwargs: 0
            builtins.len = lambda *args: 0
            torch.nn.Module.parameters = lambda self, recurse=True: iter([])
            torch.nn.Module.named_parameters = lambda self, *a, **k: iter([])
            torch.Tensor.requires_grad = property(lambda self: False)
            return model
        try:
            checks.check_freeze_all(freeze_all)
        except AssertionError as e:
            print("FAILED:", e)
        else:
            print("PASSED")
    """, timeout=300)
    assert "FAILED: freeze_all left every parameter trainable" in result.stdout, result.stdout + result.stderr


# ---------------------------------------------------------------- the real nbgrader pipeline

def test_student_notebook_fails_cleanly_and_instructor_notebook_passes(tmp_path):
    course = make_course(tmp_path / "course", [ASSIGNMENT])
    name = notebook_name(ASSIGNMENT)
    student = tmp_path / "student" / name
    student.parent.mkdir()
    shutil.copy(REPO / "release" / ASSIGNMENT / name, student)
    inverted = nbgrader("validate", "--invert", str(student), cwd=course, check=False)
    assert inverted.returncode == 0 and "Success!" in inverted.stdout, inverted.stdout + inverted.stderr
    validated = nbgrader("validate", str(course / "source" / ASSIGNMENT / name), cwd=course, check=False)
    assert validated.returncode == 0 and "Success!" in validated.stdout, validated.stdout + validated.stderr


def _reference():
    return {gid: code for gid, code in solutions(ASSIGNMENT).items()}


SUBMISSIONS = {
    # student id: (answers replacing the reference's, test cells expected to fail)
    # (each mistake sits in one cell; the other answers are correct, many in another honest style)
    "keras_habit": ({"freeze_all": FREEZE_KERAS, "count_trainable": COUNT_LEN, "replace_head": HEAD_WITH_WARNING,
                     "make_optimizer": OPTIMIZER_FILTER, "count_after_unfreeze": "trainable_after_unfreeze = 20\n"},
                    {"correct_freeze_all", "correct_count_after_unfreeze"}),
    "typo": ({"freeze_all": FREEZE_TYPO, "make_optimizer": OPTIMIZER_FILTER, "unfreeze_last": UNFREEZE_SLICE},
             {"correct_freeze_all"}),
    "features_only_and_optimizer_over_all": ({"freeze_all": FREEZE_FEATURES, "make_optimizer": OPTIMIZER_ALL,
                                              "count_after_head": "trainable_after_head = 158\n"},
                                             {"correct_freeze_all", "correct_make_optimizer", "correct_count_after_head"}),
}


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """One real `nbgrader autograde` run over every submission; returns (scores, course folder)."""
    student = release_notebook(ASSIGNMENT)
    submissions = {"reference": with_answers(student, _reference()), "untouched": student}
    for sid, (answers, _) in SUBMISSIONS.items():
        submissions[sid] = with_answers(student, {**_reference(), **answers})
    workdir = tmp_path_factory.mktemp("pytorch_grading")
    return grade(ASSIGNMENT, submissions, workdir), workdir / "course"


def test_reference_gets_full_marks(graded):
    scores, _ = graded
    assert scores["reference"] == {gid: (p, p) for gid, p in points().items()}


def test_untouched_student_notebook_gets_zero_and_fails_cleanly(graded):
    scores, course = graded
    assert set(scores["untouched"]) == set(points())
    assert all(score == 0 for score, _ in scores["untouched"].values())
    # every test cell failed because an answer is missing, not because the test machinery broke
    nb = json.loads((course / "autograded" / "untouched" / ASSIGNMENT / notebook_name(ASSIGNMENT)).read_text())
    errors = {grade_id(c): o["ename"] for c in nb["cells"] if grade_id(c) in points()
              for o in c.get("outputs", []) if o.get("output_type") == "error"}
    assert set(errors) == set(points())
    assert set(errors.values()) <= {"NameError", "NotImplementedError"}, errors


@pytest.mark.parametrize("student", sorted(SUBMISSIONS))
def test_each_mistake_loses_exactly_its_checks_points(graded, student):
    scores, _ = graded
    failing = SUBMISSIONS[student][1]
    expected = {gid: (0 if gid in failing else p, p) for gid, p in points().items()}
    assert scores[student] == expected


def test_every_exercise_has_an_answer_cell_and_a_test_cell():
    ids = {grade_id(c) for c in source_notebook(ASSIGNMENT)["cells"]}
    for name in EXERCISES + STATED_COUNTS:
        assert {name, f"correct_{name}"} <= ids, name
