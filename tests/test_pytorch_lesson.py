"""PyTorch lesson: each exercise's table of answers gets the same verdict everywhere.

For every exercise a table of student answers: honest styles that must pass and wrong answers, each with
the phrase its message must contain. Every entry is judged three ways, which must agree: the visible test
cell run as a kernel runs it, the grader's judge (the verdicts that become scores), and, for one honest and
one wrong answer per exercise, nbgrader's Validate button. Then one real grading run (``python -m autograder
grade``) shows the reference at full marks, the untouched notebook at zero, and the seed's practice mistakes
losing exactly the points of the checks they break.
"""
from __future__ import annotations

import pytest

from conftest import REPO, make_course, nbgrader
from grading import (PASS, grade_id, grade_in_production, judge_verdicts, notebook_name, release_notebook,
                     solutions, source_notebook, table_entries, table_submissions, validate_failures,
                     visible_verdicts, with_answers)

ASSIGNMENT = "pytorch_lesson"
EXERCISES = ["count_trainable", "freeze_all", "replace_head", "unfreeze_last", "make_optimizer"]
STATED_COUNTS = ["count_after_freeze", "count_after_head", "count_after_unfreeze"]

TABLE = {
    "count_trainable": [
        ("sum of flags", "def count_trainable(model):\n    return sum(p.requires_grad for p in model.parameters())\n", PASS),
        ("len of a comprehension", "def count_trainable(model):\n    return len([p for p in model.parameters() if p.requires_grad])\n", PASS),
        ("np.sum", "import numpy as np\n\ndef count_trainable(model):\n    return np.sum([p.requires_grad for p in model.parameters()])\n", PASS),
        ("a 0-d tensor", "def count_trainable(model):\n    return torch.tensor([p.requires_grad for p in model.parameters()]).sum()\n", PASS),
        ("a loop over named_parameters", "def count_trainable(model):\n    n = 0\n    for name, p in model.named_parameters():\n        if p.requires_grad:\n            n += 1\n    return n\n", PASS),
        ("numbers, not tensors", "def count_trainable(model):\n    return sum(p.numel() for p in model.parameters() if p.requires_grad)\n", "counted numbers"),
        ("every tensor", "def count_trainable(model):\n    return len(list(model.parameters()))\n", "counted every parameter tensor"),
        ("the frozen ones", "def count_trainable(model):\n    return sum(not p.requires_grad for p in model.parameters())\n", "counted the frozen tensors"),
        ("a shared tensor twice", "def count_trainable(model):\n    return sum(p.requires_grad for m in model.modules() for p in m.parameters(recurse=False))\n", "twice"),
        ("a float", "def count_trainable(model):\n    return float(sum(p.requires_grad for p in model.parameters()))\n", "whole number"),
        ("features only", "def count_trainable(model):\n    return sum(p.requires_grad for p in model.features.parameters())\n", "count_trainable"),
    ],
    "freeze_all": [
        ("a loop", "def freeze_all(model):\n    for p in model.parameters():\n        p.requires_grad = False\n    return model\n", PASS),
        ("requires_grad_", "def freeze_all(model):\n    return model.requires_grad_(False)\n", PASS),
        ("named_parameters with a warning", "import warnings\n\ndef freeze_all(model):\n    for name, p in model.named_parameters():\n        p.requires_grad_(False)\n    warnings.warn('frozen')\n    return model\n", PASS),
        ("module by module", "def freeze_all(model):\n    for m in model.modules():\n        for p in m.parameters(recurse=False):\n            p.requires_grad = False\n    return model\n", PASS),
        ("Keras's switch", "def freeze_all(model):\n    model.trainable = False\n    return model\n", "Keras's switch"),
        ("the require_grad typo", "def freeze_all(model):\n    for p in model.parameters():\n        p.require_grad = False\n    return model\n", "missing the 's'"),
        ("an attribute on the module", "def freeze_all(model):\n    model.requires_grad = False\n    return model\n", "only stores an attribute"),
        ("eval() only", "def freeze_all(model):\n    return model.eval()\n", "model.eval()"),
        ("features only", "def freeze_all(model):\n    model.features.requires_grad_(False)\n    return model\n", "froze only the features"),
        ("no return", "def freeze_all(model):\n    model.requires_grad_(False)\n", "must return the model"),
        ("nothing (the seed's no freeze)", "def freeze_all(model):\n    return model\n", "left every parameter trainable"),
    ],
    "replace_head": [
        ("classifier[-1]", "def replace_head(model, num_classes):\n    model.classifier[-1] = nn.Linear(model.classifier[-1].in_features, num_classes)\n    return model\n", PASS),
        ("classifier[1] and last_channel", "def replace_head(model, num_classes):\n    model.classifier[1] = torch.nn.Linear(model.last_channel, num_classes)\n    return model\n", PASS),
        ("no bias, a warning", "import warnings\n\ndef replace_head(model, num_classes):\n    old = model.classifier[-1]\n    warnings.warn('new head')\n    model.classifier[-1] = nn.Linear(old.in_features, num_classes, bias=False)\n    return model\n", PASS),
        ("the whole classifier", "def replace_head(model, num_classes):\n    model.classifier = nn.Linear(1280, num_classes)\n    return model\n", "replaced the whole"),
        ("appended", "def replace_head(model, num_classes):\n    model.classifier.append(nn.Linear(model.classifier[-1].out_features, num_classes))\n    return model\n", "appended a layer"),
        ("always 5 classes", "def replace_head(model, num_classes):\n    model.classifier[-1] = nn.Linear(1280, 5)\n    return model\n", "use the `num_classes` argument"),
        ("the head frozen (the seed's mistake)", "def replace_head(model, num_classes):\n    model.classifier[-1] = nn.Linear(1280, num_classes)\n    model.requires_grad_(False)\n    return model\n", "the new head is frozen"),
        ("flags reset", "def replace_head(model, num_classes):\n    model.requires_grad_(False)\n    model.classifier[-1] = nn.Linear(1280, num_classes)\n    return model\n", "changed the requires_grad flags"),
        ("wrong inputs", "def replace_head(model, num_classes):\n    model.classifier[-1] = nn.Linear(1000, num_classes)\n    return model\n", "inputs"),
        ("no return", "def replace_head(model, num_classes):\n    model.classifier[-1] = nn.Linear(1280, num_classes)\n", "must return the model"),
    ],
    "unfreeze_last": [
        ("max(0, ...)", "def unfreeze_last(model, n):\n    for block in model.features[max(0, len(model.features) - n):]:\n        block.requires_grad_(True)\n    return model\n", PASS),
        ("guarded negative slice", "def unfreeze_last(model, n):\n    if n > 0:\n        for p in model.features[-n:].parameters():\n            p.requires_grad = True\n    return model\n", PASS),
        ("indices", "def unfreeze_last(model, n):\n    blocks = list(model.features)\n    for i, block in enumerate(blocks):\n        if i >= len(blocks) - n:\n            for p in block.parameters():\n                p.requires_grad = True\n    return model\n", PASS),
        ("[-n:] (n=0 is everything)", "def unfreeze_last(model, n):\n    model.features[-n:].requires_grad_(True)\n    return model\n", "-0:"),
        ("the first n", "def unfreeze_last(model, n):\n    for p in model.features[:n].parameters():\n        p.requires_grad = True\n    return model\n", "FIRST"),
        ("the last tensors", "def unfreeze_last(model, n):\n    for p in list(model.parameters())[-n - 2:]:\n        p.requires_grad = True\n    return model\n", "TENSORS"),
        ("the whole model", "def unfreeze_last(model, n):\n    return model.requires_grad_(True)\n", "whole model"),
        ("the head frozen", "def unfreeze_last(model, n):\n    model.requires_grad_(False)\n    for block in model.features[max(0, len(model.features) - n):]:\n        block.requires_grad_(True)\n    return model\n", "froze the new head"),
        ("a negative start", "def unfreeze_last(model, n):\n    if n:\n        model.features[len(model.features) - n:].requires_grad_(True)\n    return model\n", "negative"),
        ("no return", "def unfreeze_last(model, n):\n    for block in model.features[max(0, len(model.features) - n):]:\n        block.requires_grad_(True)\n", "must return the model"),
    ],
    "make_optimizer": [
        ("Adam, a list", "def make_optimizer(model, lr):\n    return torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)\n", PASS),
        ("SGD, momentum, a filter", "def make_optimizer(model, lr):\n    return torch.optim.SGD(filter(lambda p: p.requires_grad, model.parameters()), lr=lr, momentum=0.9, weight_decay=1e-4)\n", PASS),
        ("AdamW, two groups", "def make_optimizer(model, lr):\n    head = [p for p in model.classifier.parameters() if p.requires_grad]\n    rest = [p for p in model.features.parameters() if p.requires_grad]\n    return torch.optim.AdamW([{'params': head}, {'params': rest}], lr=lr)\n", PASS),
        ("a generator", "def make_optimizer(model, lr):\n    return torch.optim.RMSprop((p for n, p in model.named_parameters() if p.requires_grad), lr=lr)\n", PASS),
        ("every parameter (the seed's mistake)", "def make_optimizer(model, lr):\n    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)\n", "frozen tensors"),
        ("the head only", "def make_optimizer(model, lr):\n    return torch.optim.Adam(model.classifier.parameters(), lr=lr)\n", "misses"),
        ("a fixed, high rate", "def make_optimizer(model, lr):\n    return torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.1)\n", "learning rates"),
        ("maximize", "def make_optimizer(model, lr):\n    return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr, maximize=True)\n", "maximize"),
        ("10x for the head", "def make_optimizer(model, lr):\n    head = list(model.classifier.parameters())\n    rest = [p for p in model.features.parameters() if p.requires_grad]\n    return torch.optim.Adam([{'params': head, 'lr': 10 * lr}, {'params': rest}], lr=lr)\n", "learning rates"),
        ("a list of parameters", "def make_optimizer(model, lr):\n    return [p for p in model.parameters() if p.requires_grad]\n", "torch.optim optimizer"),
    ],
}


def points() -> dict[str, float]:
    return {grade_id(c): c["metadata"]["nbgrader"]["points"] for c in source_notebook(ASSIGNMENT)["cells"]
            if c.get("metadata", {}).get("nbgrader", {}).get("grade")}


def test_every_exercise_has_an_answer_cell_and_a_test_cell():
    ids = {grade_id(c) for c in source_notebook(ASSIGNMENT)["cells"]}
    for name in EXERCISES + STATED_COUNTS:
        assert {name, f"correct_{name}"} <= ids, name


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
    return judge_verdicts(ASSIGNMENT, notebooks, tmp_path_factory.mktemp("pytorch_table")), where


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
    if expected != PASS:  # the student sees the grader's message already in the notebook
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


def test_the_student_version_fails_every_test_cleanly(tmp_path):
    """`nbgrader validate --invert`: no solution leaked into the release (no test passes without answers)."""
    course = make_course(tmp_path / "course", [ASSIGNMENT])
    name = notebook_name(ASSIGNMENT)
    student = tmp_path / "student" / name
    student.parent.mkdir()
    student.write_bytes((REPO / "release" / ASSIGNMENT / name).read_bytes())
    inverted = nbgrader("validate", "--invert", str(student), cwd=course, check=False)
    assert inverted.returncode == 0 and "Success!" in inverted.stdout, inverted.stdout + inverted.stderr


# ---- one real grading run: full marks, zero, and the seed's practice mistakes ----------------------------
SEED_MISTAKES = {  # the seed's common mistakes that a PyTorch answer can make, one submission
    "freeze_all": dict((label, code) for label, code, _ in TABLE["freeze_all"])["nothing (the seed's no freeze)"],
    "replace_head": dict((label, code) for label, code, _ in TABLE["replace_head"])["the head frozen (the seed's mistake)"],
    "make_optimizer": dict((label, code) for label, code, _ in TABLE["make_optimizer"])["every parameter (the seed's mistake)"],
    "count_after_head": "trainable_after_head = 158\n",
}


@pytest.fixture(scope="module")
def production(tmp_path_factory):
    student = release_notebook(ASSIGNMENT)
    submissions = {"reference": with_answers(student, solutions(ASSIGNMENT)), "untouched": student,
                   "seed_mistakes": with_answers(student, {**solutions(ASSIGNMENT), **SEED_MISTAKES})}
    return grade_in_production(ASSIGNMENT, submissions, tmp_path_factory.mktemp("pytorch_grading"))


def test_reference_gets_full_marks(production):
    scores, _, _ = production
    assert scores["reference"] == {gid: (p, p) for gid, p in points().items()}


def test_untouched_student_notebook_gets_zero(production):
    scores, messages, _ = production
    assert scores["untouched"] == {gid: (0, p) for gid, p in points().items()}
    assert all("NotImplementedError" in m or "not defined" in m for m in messages["untouched"].values()), messages


def test_the_seeds_mistakes_lose_exactly_the_points_of_their_checks(production):
    scores, _, _ = production
    broken = {f"correct_{name}" for name in SEED_MISTAKES}
    assert scores["seed_mistakes"] == {gid: (0 if gid in broken else p, p) for gid, p in points().items()}


def test_the_feedback_shows_the_students_outputs_and_each_checks_message(production):
    import html
    _, messages, out = production
    page = html.unescape((out / "feedback" / "seed_mistakes.html").read_text())
    assert "Grader: FAILED" in page and "Grader: passed" in page
    assert messages["seed_mistakes"]["correct_replace_head"][:60] in page
    assert "looks right" in page  # what a passing test cell printed in the judge
    assert "trainable" in page and "Weights:" in page  # the lesson's own cells ran in the student's kernel
