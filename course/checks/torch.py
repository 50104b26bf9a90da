"""Checks for the PyTorch lesson's exercises: each calls your function on real models and judges what it does.

Each ``check_*`` function tests exactly the contract its exercise states (in the lesson and in the answer
cell's docstring): what the function must return, what must hold afterwards, the edge cases. It calls
your function the way the grader does (``course.checks.wire.call``: on a copy of the model rebuilt from
plain data, so the verdict here is the verdict at grading time), judges the models it gets back by what
they do (a real training step, a real forward pass) and raises AssertionError with a message that names
the mistake. Expected values come from models the check builds itself, never from typed-in numbers.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy
import torch
import torchvision
from torch import nn

from course.checks.torch_wire import stray_attributes
from course.checks.wire import call

SOURCE_CLASSES = 10  # the course backbone's classifier size (its 10 pre-training shapes)
IMAGE_SIZE = 64      # the checks' images: any size works for these checks, small is quick


# ---- models the checks build ------------------------------------------------------------------------
def new_model():
    """torchvision's MobileNetV2 as the lesson builds it (19 blocks, 158 parameter tensors, a 10-class head on
    1280 features), with random weights and thin layers (width 0.25: 0.25 M numbers instead of 2.2 M), which
    makes no difference to what these checks look at and makes every call quick."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return torchvision.models.mobilenet_v2(weights=None, num_classes=SOURCE_CLASSES, width_mult=0.25)


def other_model():
    """A small model that is not a MobileNetV2 (a freeze must work on any model); two of its layers share
    one weight tensor (``model.parameters()`` yields it once)."""
    with torch.random.fork_rng():
        torch.manual_seed(1)
        features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        model = nn.Sequential(OrderedDict(features=features, hidden=nn.Linear(4, 4), tied=nn.Linear(4, 4),
                                          classifier=nn.Linear(4, 2)))
        model.tied.weight = model.hidden.weight
        return model


def frozen(model):
    for p in model.parameters():
        p.requires_grad = False
    return model


def with_new_head(model, num_classes=5):
    with torch.random.fork_rng():
        torch.manual_seed(2)
        model.classifier[-1] = nn.Linear(model.classifier[-1].in_features, num_classes)
    return model


def unfrozen_last(model, n):
    blocks = list(model.features)
    for block in blocks[len(blocks) - min(n, len(blocks)):] if n > 0 else []:
        block.requires_grad_(True)
    return model


def lesson_model(unfrozen_blocks=0, num_classes=5):
    """The model of the lesson's step 5: frozen backbone, new trainable head, the last blocks unfrozen."""
    return unfrozen_last(with_new_head(frozen(new_model()), num_classes), unfrozen_blocks)


def images(n=4, num_classes=2):
    generator = torch.Generator().manual_seed(3)
    X = torch.randn(n, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    return X, torch.arange(n) % num_classes


def trainable_names(model):
    return [name for name, p in model.named_parameters() if p.requires_grad]


def count_of(model):
    return len(trainable_names(model))


def weights(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def few(names, limit=3):
    names = list(names)
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def step(model, optimizer, num_classes):
    """One training step on a small batch; the model in eval mode, so that only the optimizer can change it."""
    model.eval()
    X, y = images(num_classes=num_classes)
    optimizer.zero_grad()
    nn.functional.cross_entropy(model(X), y).backward()
    optimizer.step()


def moved(before, model):
    return [name for name, p in model.named_parameters() if not torch.equal(before[name], p.detach())]


def as_count(value, what):
    """A whole number from ``value``: an int, a NumPy integer or a 0-d integer tensor."""
    if isinstance(value, bool) or not isinstance(value, (int, numpy.integer, torch.Tensor)):
        raise AssertionError(f"{what} gave {value!r} ({type(value).__name__}); a count is a whole number (an int)")
    if isinstance(value, torch.Tensor):
        if value.dim() != 0 or value.dtype.is_floating_point or value.dtype == torch.bool:
            raise AssertionError(f"{what} gave a tensor of shape {list(value.shape)} and dtype {value.dtype}; "
                                 f"return one whole number, e.g. with int(...)")
        return int(value.item())
    return int(value)


# ---- Exercise: count_trainable ------------------------------------------------------------------------
def check_count_trainable(count_trainable):
    """count_trainable(model) is the number of parameter tensors of ``model`` with requires_grad True, as a
    whole number, for any model: fresh, frozen, with a new head, partly unfrozen."""
    stages = [("a fresh MobileNetV2", new_model), ("a frozen model", lambda: frozen(new_model())),
              ("a frozen model with a new head", lambda: lesson_model()),
              ("a model with its last 2 blocks unfrozen", lambda: lesson_model(2)),
              ("a small model with some layers frozen and a shared weight", partly_frozen_other)]
    for stage, build in stages:
        model = build()
        expected = count_of(model)
        got = as_count(call(count_trainable, model), f"count_trainable on {stage}")
        if got == expected:
            continue
        params = list(model.named_parameters())
        if got == sum(p.numel() for _, p in params if p.requires_grad):
            raise AssertionError(f"count_trainable counted numbers (p.numel()), not tensors: on {stage} it gave {got}, "
                                 f"but {expected} tensors require gradients")
        if got == len(params) and got != expected:
            raise AssertionError(f"count_trainable counted every parameter tensor ({got}) on {stage}, frozen ones "
                                 f"too; count only those with requires_grad True ({expected})")
        if got == sum(p.requires_grad for m in model.modules() for p in m._parameters.values() if p is not None):
            raise AssertionError(f"count_trainable counted a tensor that two layers share twice ({got} on {stage}); "
                                 f"model.parameters() yields each tensor once: {expected}")
        if got == len(params) - expected:
            raise AssertionError(f"count_trainable counted the frozen tensors ({got}) on {stage}; count those with "
                                 f"requires_grad True ({expected})")
        raise AssertionError(f"count_trainable gave {got} on {stage}; {expected} parameter tensors require gradients")


def partly_frozen_other():
    model = frozen(other_model())
    model.classifier.requires_grad_(True)
    model.hidden.requires_grad_(True)
    return model


# ---- Exercise: freeze_all -----------------------------------------------------------------------------
def freeze_mistake(model, before_training):
    """Name the usual way a freeze goes wrong, from the model freeze_all left behind."""
    still = trainable_names(model)
    params = list(model.parameters())
    if "trainable" in stray_attributes(model):
        return ("freeze_all set `model.trainable`: that is Keras's switch; a PyTorch module just stores it and "
                "freezes nothing. Set requires_grad = False on every parameter")
    if "requires_grad" in stray_attributes(model):
        return ("freeze_all assigned `model.requires_grad = ...`, which only stores an attribute on the module; set it "
                "on each parameter, or call model.requires_grad_(False) (with the underscore and the brackets)")
    if any("require_grad" in stray_attributes(p) for p in params):
        return ("freeze_all set `p.require_grad` (missing the 's'): PyTorch accepts the typo silently and freezes "
                "nothing; the attribute is `requires_grad`")
    if len(still) == len(params) and before_training and not model.training:
        return ("freeze_all called model.eval(): that switches BatchNorm and Dropout to inference behaviour, but every "
                "parameter still requires gradients; set requires_grad = False on the parameters")
    if still and all(name.startswith("classifier.") for name in still):
        return (f"freeze_all froze only the features; {len(still)} classifier tensors ({few(still)}) still require "
                f"gradients: freeze every parameter of the model")
    if len(still) == len(params):
        return "freeze_all left every parameter trainable (requires_grad is still True everywhere)"
    return f"after freeze_all, {len(still)} of {len(params)} parameter tensors still require gradients: {few(still)}"


def check_freeze_all(freeze_all):
    """freeze_all(model) sets requires_grad = False on every parameter of ``model`` (any model, its head
    included), changes no weight, and returns the same model. Then a training step, even with an optimizer
    over all parameters, leaves every frozen weight bit-identical."""
    for build in (new_model, other_model):
        model = build()
        before = weights(model)
        returned = call(freeze_all, model)
        if trainable_names(model):
            raise AssertionError(freeze_mistake(model, before_training=True))
        if returned is not model:
            raise AssertionError("freeze_all must return the model it froze (add `return model`), "
                                 f"it returned {returned!r:.60}")
        if moved(before, model):
            raise AssertionError(f"freeze_all changed weights ({few(moved(before, model))}); it should only freeze")
    model = new_model()
    call(freeze_all, model)
    with_new_head(model)
    before = weights(model)
    step(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1), 5)
    changed = moved(before, model)
    frozen_changed = [name for name in changed if not name.startswith("classifier.")]
    if frozen_changed:
        raise AssertionError(f"a training step changed {len(frozen_changed)} frozen tensors ({few(frozen_changed)})")
    if not changed:
        raise AssertionError("a training step did not move the new head on top of the frozen model")


# ---- Exercise: replace_head ---------------------------------------------------------------------------
def head_mistake(model, old_classifier, num_classes):
    classifier = model.classifier
    if isinstance(classifier, nn.Linear):
        return ("replace_head replaced the whole `model.classifier` with a Linear layer; keep the classifier "
                "(Dropout, then Linear) and replace only its last layer, `model.classifier[-1]`")
    if not isinstance(classifier, nn.Sequential):
        return f"model.classifier is now a {type(classifier).__name__}; replace only its last layer"
    if len(classifier) > len(old_classifier):
        return ("replace_head appended a layer after the old 10-class head instead of replacing it; assign the new "
                "layer to `model.classifier[-1]`")
    if len(classifier) < len(old_classifier) or classifier[0] is not old_classifier[0]:
        return "replace_head changed the layers before the head (the Dropout): replace only `model.classifier[-1]`"
    head = classifier[-1]
    if head is old_classifier[-1]:
        return "the last layer of model.classifier is still the old head: assign a new nn.Linear to model.classifier[-1]"
    if not isinstance(head, nn.Linear):
        return f"the last layer of model.classifier should be an nn.Linear, not {type(head).__name__}"
    if head.in_features != old_classifier[-1].in_features:
        return (f"the new head takes {head.in_features} inputs but the backbone gives {old_classifier[-1].in_features}: "
                "use the old layer's `in_features`")
    if head.out_features != num_classes:
        return (f"replace_head(model, {num_classes}) made a head with {head.out_features} outputs: use the "
                "`num_classes` argument, not a fixed number")
    if not all(p.requires_grad for p in head.parameters()):
        return "the new head is frozen (requires_grad False): did you freeze the model after replacing the head?"
    return None


def check_replace_head(replace_head):
    """replace_head(model, num_classes) puts a new, trainable nn.Linear(old in_features, num_classes) in
    ``model.classifier[-1]``, changes nothing else (the Dropout before it, the backbone, every other
    requires_grad flag) and returns the model; the model then outputs num_classes scores per image."""
    for num_classes, unfrozen in ((3, 0), (7, 2)):
        model = unfrozen_last(frozen(new_model()), unfrozen)
        old_classifier = list(model.classifier)
        flags = {name: p.requires_grad for name, p in model.named_parameters() if not name.startswith("classifier.")}
        returned = call(replace_head, model, num_classes)
        mistake = head_mistake(model, old_classifier, num_classes)
        if mistake:
            raise AssertionError(mistake)
        changed = [name for name, p in model.named_parameters() if name in flags and p.requires_grad != flags[name]]
        if changed:
            raise AssertionError(f"replace_head changed the requires_grad flags of {len(changed)} backbone tensors "
                                 f"({few(changed)}); it should only swap the head")
        if returned is not model:
            raise AssertionError(f"replace_head must return the model (add `return model`), it returned {returned!r:.60}")
        model.eval()
        with torch.no_grad():
            out = model(images()[0])
        if list(out.shape) != [4, num_classes]:
            raise AssertionError(f"after replace_head(model, {num_classes}) the model outputs shape {list(out.shape)}")
    model = frozen(new_model())
    call(replace_head, model, 5)
    before = weights(model)
    step(model, torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9), 5)
    changed = moved(before, model)
    if not changed or any(not name.startswith("classifier.") for name in changed):
        raise AssertionError(f"a training step should move the new head and only the head; it moved {few(changed) or 'nothing'}")


# ---- Exercise: unfreeze_last --------------------------------------------------------------------------
def check_unfreeze_last(unfreeze_last):
    """unfreeze_last(model, n) makes every parameter of the last n blocks of ``model.features`` require
    gradients and changes no other flag (earlier blocks stay frozen, the head stays trainable); n=0 changes
    nothing, n larger than the number of blocks unfreezes them all; it returns the model."""
    blocks = len(new_model().features)
    for n in (1, 3, 0, blocks + 4):
        model = lesson_model()
        returned = call(unfreeze_last, model, n)
        want, got = set(trainable_names(lesson_model(n))), set(trainable_names(model))
        if want == got:
            if returned is not model:
                raise AssertionError(f"unfreeze_last must return the model (add `return model`), it returned {returned!r:.60}")
            continue
        head = set(trainable_names(lesson_model()))
        everything = {name for name, _ in model.named_parameters()}
        first = {name for name, _ in model.named_parameters()
                 if name.startswith(tuple(f"features.{i}." for i in range(n)))} | head
        last_tensors = {name for name, _ in list(model.named_parameters())[-n - 2:]} | head if n else head
        if head - got:
            mistake = "unfreeze_last froze the new head; it must only add blocks of model.features to what trains"
        elif n == 0 and got == want | {name for name in everything if name.startswith("features.")}:
            mistake = ("unfreeze_last(model, 0) unfroze every block: `model.features[-0:]` is the whole list, not an "
                       "empty one; take the blocks from index len(model.features) - n")
        elif got == head:
            mistake = f"unfreeze_last(model, {n}) left every block of model.features frozen"
        elif n > blocks and got == set(trainable_names(lesson_model(n - blocks))):
            mistake = (f"unfreeze_last(model, {n}) with more than the {blocks} blocks there are unfroze only the last "
                       f"{n - blocks}: len(model.features) - n is negative, and a negative start counts from the end; "
                       f"start at max(0, len(model.features) - n)")
        elif got == first:
            mistake = (f"unfreeze_last(model, {n}) unfroze the FIRST {n} blocks of model.features; fine-tuning unfreezes "
                       f"the last ones, nearest the head")
        elif got == last_tensors:
            mistake = (f"unfreeze_last(model, {n}) unfroze the last {n} parameter TENSORS; it should unfreeze every "
                       f"parameter of the last {n} blocks of model.features")
        elif got == everything:
            mistake = f"unfreeze_last(model, {n}) unfroze the whole model, not just the last {n} of {blocks} blocks"
        else:
            mistake = (f"unfreeze_last(model, {n}): wrongly trainable: {few(sorted(got - want)) or 'none'}; "
                       f"wrongly frozen: {few(sorted(want - got)) or 'none'}")
        raise AssertionError(mistake)
    model = lesson_model()
    call(unfreeze_last, model, 3)
    before = weights(model)
    step(model, torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1), 5)
    trained = set(moved(before, model))
    if trained - set(trainable_names(lesson_model(3))) or not trained:
        raise AssertionError(f"after unfreeze_last(model, 3) a training step moved {few(sorted(trained)) or 'nothing'}")


# ---- Exercise: make_optimizer -------------------------------------------------------------------------
def check_make_optimizer(make_optimizer):
    """make_optimizer(model, lr) returns a torch.optim optimizer over exactly the parameters of ``model``
    that require gradients (each once), every parameter group at learning rate ``lr``, minimising the loss;
    one step with it moves what trains and nothing else."""
    for unfrozen, lr in ((0, 0.01), (2, 0.001)):
        model = lesson_model(unfrozen)
        optimizer = call(make_optimizer, model, lr)
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise AssertionError(f"make_optimizer must return a torch.optim optimizer, not {type(optimizer).__name__}")
        names = {id(p): name for name, p in model.named_parameters()}
        held = [p for group in optimizer.param_groups for p in group["params"]]
        strangers = [p for p in held if id(p) not in names]
        if strangers:
            raise AssertionError(f"the optimizer holds {len(strangers)} tensors that are not parameters of the model")
        frozen_held = [names[id(p)] for p in held if not p.requires_grad]
        if frozen_held:
            raise AssertionError(
                f"the optimizer holds {len(frozen_held)} frozen tensors ({few(frozen_held)}): it was built over all "
                "parameters. Give it only those that require gradients, [p for p in model.parameters() if "
                "p.requires_grad]: a frozen tensor gets no .grad, so a step skips it, but an optimizer over "
                "everything keeps state for tensors that never train, hides which ones do, and moves a tensor that "
                "trained before and still carries a .grad")
        held_ids = {id(p) for p in held}
        missing = [name for name, p in model.named_parameters() if p.requires_grad and id(p) not in held_ids]
        if missing:
            raise AssertionError(f"the optimizer misses {len(missing)} trainable tensors ({few(missing)}), with "
                                 f"{unfrozen} unfrozen blocks: collect them from the whole model, not just the head")
        rates = [group.get("lr") for group in optimizer.param_groups]
        if any(rate != lr for rate in rates):
            raise AssertionError(f"make_optimizer(model, lr={lr}) built groups with learning rates {rates}: use lr")
        if any(group.get("maximize") for group in optimizer.param_groups):
            raise AssertionError("the optimizer has maximize=True: it would climb the loss instead of descending it")
        before = weights(model)
        step(model, optimizer, 5)
        changed = set(moved(before, model))
        if not changed or changed - set(trainable_names(model)):
            raise AssertionError(f"one step with the optimizer moved {few(sorted(changed)) or 'nothing'}; it should move "
                                 "the trainable tensors only")


# ---- stated counts ------------------------------------------------------------------------------------
def check_is_count(answer, name="your answer"):
    """Visible check: the stated count is a whole number (whether it is right is checked at grading)."""
    if as_count(answer, name) < 0:
        raise AssertionError(f"{name} is a count of tensors, it cannot be negative")


def check_stated(answer, model, stage):
    params = list(model.parameters())
    expected, got = count_of(model), as_count(answer, f"the count {stage}")
    if got == expected:
        return
    if got == len(params):
        raise AssertionError(f"{got} is every parameter tensor of the model; {stage} only {expected} require gradients")
    if got == sum(p.numel() for p in params if p.requires_grad):
        raise AssertionError(f"{got} counts numbers, not tensors; {stage}, {expected} tensors require gradients")
    raise AssertionError(f"{stage}, {expected} parameter tensors require gradients, not {got}: "
                         "run count_trainable(model) at that point of the lesson")


def check_count_after_freeze(answer):
    check_stated(answer, frozen(new_model()), "after freeze_all")


def check_count_after_head(answer, num_classes=5):
    check_stated(answer, lesson_model(0, num_classes), "after replace_head")


def check_count_after_unfreeze(answer, n):
    check_stated(answer, lesson_model(n), f"after unfreeze_last(model, {n})")
