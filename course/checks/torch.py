"""Behavioural checks for the PyTorch lesson's graded exercises.

Each ``check_*`` function builds a real torchvision MobileNetV2 (random weights, the course backbone's
architecture with 10 source classes), runs the student's function on it and raises AssertionError with
a message that names the mistake. Expected values are computed from that model, never hard-coded.

Tamper resistance: every builtin and library reference used to judge is captured here at import time,
as a private module-level name, and the model is walked through its own ``__dict__`` (``_parameters``,
``_buffers``, ``_modules``), so redefining ``sum``/``len`` in the notebook or patching
``torch.nn.Module.parameters`` or ``torch.Tensor.requires_grad`` afterwards changes nothing here.
The lesson imports this module in its first code cell, before any answer cell runs.
"""
from __future__ import annotations

import builtins

import numpy
import torch
import torchvision

# ---- references captured at import ----------------------------------------------------------------
_sum, _len, _isinstance, _id, _type = builtins.sum, builtins.len, builtins.isinstance, builtins.id, builtins.type
_int, _bool, _list, _set, _range, _repr = builtins.int, builtins.bool, builtins.list, builtins.set, builtins.range, builtins.repr
_any, _all, _sorted = builtins.any, builtins.all, builtins.sorted
_object_getattribute = builtins.object.__getattribute__
_dict_items, _dict_get = builtins.dict.items, builtins.dict.get
_str_startswith, _str_join = builtins.str.startswith, builtins.str.join
_requires_grad = torch._C.TensorBase.__dict__["requires_grad"].__get__
_set_requires_grad = torch._C.TensorBase.__dict__["requires_grad"].__set__
_Tensor, _Module, _Linear, _Sequential = torch.Tensor, torch.nn.Module, torch.nn.Linear, torch.nn.Sequential
_BatchNorm, _Optimizer, _SGD = torch.nn.modules.batchnorm._BatchNorm, torch.optim.Optimizer, torch.optim.SGD
_module_call, _module_train = torch.nn.Module.__call__, torch.nn.Module.train
_optimizer_zero_grad = torch.optim.Optimizer.zero_grad
_tensor_backward, _tensor_clone, _tensor_item = torch.Tensor.backward, torch.Tensor.clone, torch.Tensor.item
_tensor_numel = torch.Tensor.numel
_equal, _randn, _tensor, _no_grad = torch.equal, torch.randn, torch.tensor, torch.no_grad
_Generator, _fork_rng, _manual_seed = torch.Generator, torch.random.fork_rng, torch.manual_seed
_cross_entropy = torch.nn.functional.cross_entropy
_mobilenet_v2 = torchvision.models.mobilenet_v2
_numpy_integer = numpy.integer

SOURCE_CLASSES = 10  # the course backbone's classifier size (its 10 pre-training shapes)
IMAGE_SIZE = 96


# ---- a real model, walked without trusting anything the notebook can redefine ---------------------
def _state(module):
    return _object_getattribute(module, "__dict__")


def _children(module):
    return [(name, child) for name, child in _dict_items(_state(module)["_modules"]) if child is not None]


def _child(module, name):
    return _dict_get(_state(module)["_modules"], name)


def _named_parameters(module, prefix=""):
    """(dotted name, tensor) for every parameter, each tensor once, in registration order."""
    found, seen = [], _set()

    def walk(m, prefix):
        for name, p in _dict_items(_state(m)["_parameters"]):
            if p is not None and _id(p) not in seen:
                seen.add(_id(p))
                found.append((prefix + name, p))
        for name, child in _children(m):
            walk(child, prefix + name + ".")

    walk(module, prefix)
    return found


def _batchnorm_buffers(module, prefix=""):
    found = []

    def walk(m, prefix):
        if _isinstance(m, _BatchNorm):
            for name, b in _dict_items(_state(m)["_buffers"]):
                if b is not None:
                    found.append((prefix + name, b))
        for name, child in _children(m):
            walk(child, prefix + name + ".")

    walk(module, prefix)
    return found


def _trainable_names(model):
    return [name for name, p in _named_parameters(model) if _requires_grad(p)]


def _count(model):
    return _len(_trainable_names(model))


def _blocks(model):
    """The sub-modules of ``model.features`` (MobileNetV2's blocks), in order."""
    return [child for _, child in _children(_child(model, "features"))]


def _head(model):
    return _children(_child(model, "classifier"))[-1][1]


def new_model():
    """torchvision MobileNetV2 with the course backbone's architecture and random weights (train mode, as built)."""
    with _fork_rng():
        _manual_seed(0)
        return _mobilenet_v2(weights=None, num_classes=SOURCE_CLASSES)


def _images(n=2):
    generator = _Generator().manual_seed(1)
    return _randn(n, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator), _tensor([k % 2 for k in _range(n)])


# ---- reference steps, used to build the model a check needs (never the student's) ------------------
def _freeze(model):
    for _, p in _named_parameters(model):
        _set_requires_grad(p, False)
    return model


def _new_head(model, num_classes):
    classifier = _child(model, "classifier")
    name, old = _children(classifier)[-1]
    with _fork_rng():
        _manual_seed(1)
        _state(classifier)["_modules"][name] = _Linear(old.in_features, num_classes)
    return model


def _unfreeze(model, n):
    for block in _blocks(model)[_len(_blocks(model)) - n:]:
        for _, p in _named_parameters(block):
            _set_requires_grad(p, True)
    return model


def _model_with_new_head(num_classes=5, unfrozen_blocks=0):
    model = _new_head(_freeze(new_model()), num_classes)
    return _unfreeze(model, unfrozen_blocks)


def _as_int(value, what):
    if _isinstance(value, _Tensor) and _tensor_numel(value) == 1:
        value = _tensor_item(value)
    if _isinstance(value, _bool) or not _isinstance(value, (_int, _numpy_integer)):
        raise AssertionError(f"{what} should be a whole number (an int), not {_type(value).__name__} {_repr(value)}")
    return _int(value)


def _few(names, k=3):
    return _str_join(", ", names[:k]) + (f" and {_len(names) - k} more" if _len(names) > k else "")


# ---- what the lesson's training step does, and what it must leave alone ---------------------------
def _snapshot(model):
    return ({name: _tensor_clone(p).detach() for name, p in _named_parameters(model)},
            {name: _tensor_clone(b) for name, b in _batchnorm_buffers(model)})


def _training_step(model, optimizer):
    """One step as the lesson trains: the backbone in eval() mode (BatchNorm statistics fixed), the head in
    train() mode, gradients of the loss on two images, optimizer.step()."""
    _module_train(model, True)
    _module_train(_child(model, "features"), False)
    images, labels = _images()
    _optimizer_zero_grad(optimizer)
    loss = _cross_entropy(_module_call(model, images), labels)
    _tensor_backward(loss)
    _type(optimizer).step(optimizer)
    _module_train(model, False)


def _check_step(model, optimizer, who, frozen=None):
    """One training step; the ``frozen`` tensors (default: those with requires_grad False) and every BatchNorm
    buffer must come out bit-identical, and the head must move."""
    if frozen is None:
        frozen = [name for name, p in _named_parameters(model) if not _requires_grad(p)]
    head = [name for name, p in _named_parameters(_child(model, "classifier"), "classifier.")]
    params_before, buffers_before = _snapshot(model)
    _training_step(model, optimizer)
    params_after, buffers_after = _snapshot(model)
    moved = [name for name in frozen if not _equal(params_before[name], params_after[name])]
    if moved:
        raise AssertionError(f"{who}: one optimizer step changed {_len(moved)} frozen parameter tensors "
                             f"({_few(moved)}); frozen weights must stay bit-identical")
    drifted = [name for name in buffers_before if not _equal(buffers_before[name], buffers_after[name])]
    if drifted:
        raise AssertionError(f"{who}: one training step changed BatchNorm buffers ({_few(drifted)}); the frozen "
                             f"backbone must keep its running statistics")
    if _all(_equal(params_before[name], params_after[name]) for name in head):
        raise AssertionError(f"{who}: one optimizer step did not move the new head at all; it must train")


# ---- graded exercises ------------------------------------------------------------------------------
def _freeze_mistake(model):
    """Name the usual way a freeze goes wrong, judging the model freeze_all left behind."""
    params = _named_parameters(model)
    still = _trainable_names(model)
    state = _state(model)
    if "trainable" in state:
        return ("freeze_all set `model.trainable`: that is Keras's switch, a PyTorch module just stores it and "
                "freezes nothing; set requires_grad = False on every parameter")
    if "requires_grad" in state:
        return ("freeze_all assigned `model.requires_grad = ...`, which only stores an attribute on the module; "
                "set it on each parameter, or call model.requires_grad_(False) (with the underscore and brackets)")
    if _any("require_grad" in _state(p) for _, p in params):
        return ("freeze_all set `p.require_grad` (missing the 's'): PyTorch accepts the typo silently and "
                "freezes nothing; the attribute is `requires_grad`")
    if _len(still) == _len(params) and not _object_getattribute(model, "training"):
        return ("freeze_all called model.eval(): that switches BatchNorm and Dropout to inference behaviour but "
                "every parameter still requires gradients; set requires_grad = False on the parameters")
    if still and _all(_str_startswith(name, "classifier.") for name in still):
        return (f"freeze_all froze only `model.features`; {_len(still)} classifier tensors ({_few(still)}) still "
                f"require gradients: freeze every parameter of the model")
    if _len(still) == _len(params):
        return "freeze_all left every parameter trainable (requires_grad is still True everywhere)"
    return f"after freeze_all, {_len(still)} of {_len(params)} parameter tensors still require gradients: {_few(still)}"


def check_freeze_all(freeze_all):
    """freeze_all(model): every parameter requires_grad == False, the model is returned."""
    model = new_model()
    returned = freeze_all(model)
    if _count(model):
        raise AssertionError(_freeze_mistake(model))
    if returned is not model:
        raise AssertionError(f"freeze_all must return the model it froze (add `return model`), it returned {_repr(returned)[:60]}")


def check_freeze_all_step(freeze_all):
    """After freeze_all and a new head, one step of SGD with momentum and weight decay over *all* parameters
    (a careless optimizer) must leave the backbone and its BatchNorm buffers bit-identical."""
    model = new_model()
    freeze_all(model)
    _new_head(model, 5)
    backbone = [name for name, _ in _named_parameters(model) if not _str_startswith(name, "classifier.")]
    optimizer = _SGD([p for _, p in _named_parameters(model)], lr=0.1, momentum=0.9, weight_decay=0.1)
    _check_step(model, optimizer, "after freeze_all", frozen=backbone)


def _head_mistake(model, old_head, old_classifier_len, old_in, num_classes, returned):
    classifier = _child(model, "classifier")
    if _isinstance(classifier, _Linear):
        return ("replace_head replaced the whole `model.classifier` with a Linear layer; keep the classifier "
                "(Dropout, then Linear) and replace only its last layer, `model.classifier[-1]`")
    if not _isinstance(classifier, _Sequential):
        return f"model.classifier is now a {_type(classifier).__name__}; replace only its last layer"
    head = _head(model)
    if _len(_children(classifier)) > old_classifier_len:
        return ("replace_head appended a layer after the old 10-class head instead of replacing it; "
                "assign the new layer to `model.classifier[-1]`")
    if head is old_head:
        return "the last layer of model.classifier is still the old head: assign a new nn.Linear to model.classifier[-1]"
    if not _isinstance(head, _Linear):
        return f"the last layer of model.classifier should be an nn.Linear, not {_type(head).__name__}"
    if head.in_features != old_in:
        return (f"the new head takes {head.in_features} inputs but the backbone gives {old_in}: "
                "use the old layer's `in_features`")
    if head.out_features != num_classes:
        return (f"replace_head(model, {num_classes}) made a head with {head.out_features} outputs: use the "
                "`num_classes` argument, not a fixed number")
    frozen_head = [name for name, p in _named_parameters(head) if not _requires_grad(p)]
    if frozen_head:
        return "the new head is frozen (requires_grad False): did you freeze the model after replacing the head?"
    if _count(model) > _len(_named_parameters(head)):
        return (f"replace_head made {_count(model) - _len(_named_parameters(head))} backbone tensors trainable "
                "again; it should only swap the head")
    if returned is not model:
        return f"replace_head must return the model (add `return model`), it returned {_repr(returned)[:60]}"
    return None


def check_replace_head(replace_head):
    """replace_head(model, num_classes): classifier[-1] is a new trainable Linear(in_features, num_classes);
    the frozen backbone stays frozen; the model's output has num_classes columns."""
    for num_classes in (3, 7):
        model = _freeze(new_model())
        old_head = _head(model)
        old_len = _len(_children(_child(model, "classifier")))
        returned = replace_head(model, num_classes)
        mistake = _head_mistake(model, old_head, old_len, old_head.in_features, num_classes, returned)
        if mistake:
            raise AssertionError(mistake)
    _module_train(model, False)  # the last model: its output must have num_classes columns
    with _no_grad():
        out = _module_call(model, _images()[0])
    if _len(out.shape) != 2 or out.shape[1] != num_classes:
        raise AssertionError(f"after replace_head(model, {num_classes}) the model outputs shape {_list(out.shape)}")


def check_replace_head_step(replace_head):
    """After replace_head on a frozen model, one step moves only the head; BatchNorm buffers stay put."""
    model = _freeze(new_model())
    replace_head(model, 5)
    optimizer = _SGD([p for _, p in _named_parameters(model) if _requires_grad(p)], lr=0.1, momentum=0.9)
    _check_step(model, optimizer, "after replace_head")


def check_count_trainable(count_trainable):
    """count_trainable(model) equals the number of parameter tensors that require gradients, at every stage."""
    stages = [("a fresh model", lambda: new_model()),
              ("a frozen model", lambda: _freeze(new_model())),
              ("a frozen model with a new head", lambda: _model_with_new_head(5)),
              ("a model with its last 2 blocks unfrozen", lambda: _model_with_new_head(5, 2))]
    for stage, build in stages:
        model = build()
        params = _named_parameters(model)
        expected = _count(model)
        got = _as_int(count_trainable(model), f"count_trainable({stage})")
        if got == expected:
            continue
        trainable_numbers = _sum(_tensor_numel(p) for _, p in params if _requires_grad(p))
        if got == trainable_numbers and got != expected:
            raise AssertionError(f"count_trainable counted numbers (p.numel()), not tensors: on {stage} it gave "
                                 f"{got}, but {expected} tensors require gradients")
        if got == _len(params):
            raise AssertionError(f"count_trainable counted every parameter tensor ({got}) on {stage}, frozen ones "
                                 f"too; count only those with requires_grad True ({expected})")
        raise AssertionError(f"count_trainable gave {got} on {stage}; {expected} parameter tensors require gradients")


def check_unfreeze_last(unfreeze_last):
    """unfreeze_last(model, n): the last n blocks of model.features train, the earlier blocks stay frozen,
    the head is left as it was (trainable)."""
    for n in (1, 3):
        model = _model_with_new_head(5)
        expected = _model_with_new_head(5, n)
        blocks = _len(_blocks(model))
        unfreeze_last(model, n)
        want, got = _set(_trainable_names(expected)), _set(_trainable_names(model))
        if want == got:
            continue
        first_n = _set(_trainable_names(_unfreeze_first(_model_with_new_head(5), n)))
        last_tensors = _set(name for name, _ in _named_parameters(model)[-n - 2:])
        head_only = _set(_trainable_names(_model_with_new_head(5)))
        if _any(name in head_only and name not in got for name in want):
            mistake = "unfreeze_last froze the new head; it must only add blocks of model.features to what trains"
        elif got == head_only:
            mistake = f"unfreeze_last(model, {n}) left every block of model.features frozen"
        elif got == first_n:
            mistake = (f"unfreeze_last(model, {n}) unfroze the FIRST {n} blocks of model.features; fine-tuning "
                       f"unfreezes the last ones, model.features[-{n}:], nearest the head")
        elif got <= last_tensors | head_only:
            mistake = (f"unfreeze_last(model, {n}) unfroze the last {n} parameter TENSORS; it should unfreeze every "
                       f"parameter of the last {n} blocks of model.features")
        elif _len(got) == _len(_named_parameters(model)):
            mistake = f"unfreeze_last(model, {n}) unfroze the whole model, not just the last {n} of {blocks} blocks"
        else:
            extra, missing = _list(got - want), _list(want - got)
            mistake = (f"unfreeze_last(model, {n}): wrongly trainable: {_few(_sorted(extra)) or 'none'}; "
                       f"wrongly frozen: {_few(_sorted(missing)) or 'none'}")
        raise AssertionError(mistake)


def _unfreeze_first(model, n):
    for block in _blocks(model)[:n]:
        for _, p in _named_parameters(block):
            _set_requires_grad(p, True)
    return model


def _optimizer_params(optimizer):
    groups = _state(optimizer)["param_groups"]
    return [p for group in groups for p in group["params"]], groups


def check_make_optimizer(make_optimizer):
    """make_optimizer(model, lr): an optimizer over exactly the trainable parameters, every group at ``lr``;
    one step with it moves the head and leaves frozen weights and BatchNorm buffers bit-identical."""
    for unfrozen, lr in ((0, 0.01), (2, 0.001)):
        model = _model_with_new_head(5, unfrozen)
        trainable = _set(_id(p) for _, p in _named_parameters(model) if _requires_grad(p))
        optimizer = make_optimizer(model, lr)
        if not _isinstance(optimizer, _Optimizer):
            raise AssertionError(f"make_optimizer must return a torch.optim optimizer, not {_type(optimizer).__name__}")
        params, groups = _optimizer_params(optimizer)
        held = _set(_id(p) for p in params)
        frozen_held = [name for name, p in _named_parameters(model) if _id(p) in held and _id(p) not in trainable]
        if frozen_held:
            raise AssertionError(
                f"the optimizer holds {_len(frozen_held)} frozen tensors ({_few(frozen_held)}): it was built over all "
                "parameters. Give it only those that require gradients, e.g. "
                "[p for p in model.parameters() if p.requires_grad]; with momentum or weight decay, or stale "
                "gradients, an optimizer can still move frozen weights")
        missing = [name for name, p in _named_parameters(model) if _id(p) in trainable and _id(p) not in held]
        if missing:
            raise AssertionError(f"the optimizer misses {_len(missing)} trainable tensors ({_few(missing)}), "
                                 f"with {unfrozen} unfrozen blocks: collect them from the whole model, not just the head")
        rates = [group.get("lr") for group in groups]
        if _any(rate != lr for rate in rates):
            raise AssertionError(f"make_optimizer(model, lr={lr}) built groups with learning rates {rates}: use lr")
        if unfrozen:  # one step: the head and the unfrozen blocks may move, nothing else
            _check_step(model, optimizer, "with the optimizer from make_optimizer")


# ---- stated counts ---------------------------------------------------------------------------------
def check_is_count(answer, name="your answer"):
    """Visible check: the stated count is a whole number, not a placeholder."""
    value = _as_int(answer, name)
    if value < 0:
        raise AssertionError(f"{name} is a count of tensors, it cannot be negative")


def _check_stated(answer, model, stage):
    params = _named_parameters(model)
    expected, got = _count(model), _as_int(answer, f"the count {stage}")
    if got == expected:
        return
    if got == _len(params):
        raise AssertionError(f"{got} is every parameter tensor of the model; {stage} only {expected} require gradients")
    if got == _sum(_tensor_numel(p) for _, p in params if _requires_grad(p)):
        raise AssertionError(f"{got} counts numbers, not tensors; {stage}, {expected} tensors require gradients")
    raise AssertionError(f"{stage}, {expected} parameter tensors require gradients, not {got}: "
                         "run count_trainable(model) at that point of the lesson")


def check_count_after_freeze(answer):
    _check_stated(answer, _freeze(new_model()), "after freeze_all")


def check_count_after_head(answer, num_classes=5):
    _check_stated(answer, _model_with_new_head(num_classes), "after replace_head")


def check_count_after_unfreeze(answer, n):
    _check_stated(answer, _model_with_new_head(5, n), f"after unfreeze_last(model, {n})")
