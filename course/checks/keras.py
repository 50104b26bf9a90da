"""Behavioural checks for the Keras lesson's graded exercises.

Each ``check_*`` function builds real Keras models, runs the student's function on them, trains one
step where behaviour matters, and raises AssertionError with a message that names the mistake.
Expected numbers (layer counts, trainable parameter counts) are computed from a reference model the
check builds itself, never hard-coded.

Where the weights do not matter (which layers are frozen, what one training step changes) the checks
build MobileNetV2 with ``weights=None`` on 32x32 inputs: same layers and parameter counts as the
lesson's 96x96 model, built and stepped in about a second. Only ``check_build_base_weights`` loads the
pre-trained weights chosen by the course setting, to compare them with what the student built.

Tamper resistance: every builtin and Keras/TensorFlow reference used to judge is captured here at
import time, as a private module-level name. The lesson imports this module in its first code cell,
before any answer cell runs, so redefining ``len`` or patching ``keras.layers.Layer.trainable``
in the notebook afterwards changes nothing here. Weights are compared as NumPy copies, bit for bit.
"""
from __future__ import annotations

import builtins
import functools
import math
import warnings

import numpy
import tensorflow as tf
from tensorflow import keras

# ---- references captured at import ----------------------------------------------------------------
_len, _isinstance, _id, _type, _callable = builtins.len, builtins.isinstance, builtins.id, builtins.type, builtins.callable
_int, _float, _list, _set, _range, _repr = builtins.int, builtins.float, builtins.list, builtins.set, builtins.range, builtins.repr
_sum, _any, _all, _zip, _enumerate, _tuple = builtins.sum, builtins.any, builtins.all, builtins.zip, builtins.enumerate, builtins.tuple
_abs, _str, _getattr, _hasattr = builtins.abs, builtins.str, builtins.getattr, builtins.hasattr
_isclose = math.isclose
_Layer, _Model, _Input = keras.layers.Layer, keras.Model, keras.Input
_Dense, _BatchNormalization, _Conv2D = keras.layers.Dense, keras.layers.BatchNormalization, keras.layers.Conv2D
_GlobalAveragePooling2D = keras.layers.GlobalAveragePooling2D
_Adam, _SGD, _MobileNetV2 = keras.optimizers.Adam, keras.optimizers.SGD, keras.applications.MobileNetV2
_trainable_get = _Layer.trainable.fget
_trainable_set = _Layer.trainable.fset
_weights_get = _Layer.weights.fget
_trainable_weights_get = _Layer.trainable_weights.fget
_non_trainable_weights_get = _Layer.non_trainable_weights.fget
_flatten_layers = _Layer._flatten_layers
_model_layers_get = _Model.layers.fget
_model_call, _model_compile, _train_on_batch = _Model.__call__, _Model.compile, _Model.train_on_batch
_model_evaluate = _Model.evaluate
_to_numpy = keras.ops.convert_to_numpy
_np_array, _np_array_equal, _np_prod, _np_eye = numpy.array, numpy.array_equal, numpy.prod, numpy.eye
_np_allclose, _np_log, _np_clip, _np_sum, _np_all = numpy.allclose, numpy.log, numpy.clip, numpy.sum, numpy.all
_RandomState = numpy.random.RandomState
_run_functions_eagerly, _functions_run_eagerly = tf.config.run_functions_eagerly, tf.config.functions_run_eagerly
_catch_warnings, _simplefilter, _wraps = warnings.catch_warnings, warnings.simplefilter, functools.wraps

CHECK_SHAPE = (32, 32, 3)   # small inputs for checks where the weights and image size do not matter
LESSON_SHAPE = (96, 96, 3)  # the lesson's image size


def _quiet(check):
    """Keras warnings raised while a check runs (e.g. "no trainable weights" when it steps a model that
    is meant to be frozen) stay off stderr, where `nbgrader validate` would count them as a failure."""
    @_wraps(check)
    def run(*args, **kwargs):
        with _catch_warnings():
            _simplefilter("ignore")
            return check(*args, **kwargs)
    return run


# ---- small helpers ----------------------------------------------------------------------------------
def _reference_base(input_shape=CHECK_SHAPE, calibrate=False):
    """MobileNetV2 exactly as the lesson builds it, random weights (for structure, counts and one step).

    With random weights and the initial BatchNorm statistics (mean 0, variance 1) the activations fade
    to almost nothing by the last block, so a training step would barely reach the last layers.
    ``calibrate`` sets every BatchNorm's moving statistics to those of one random batch (momentum 0 for
    one forward pass), which gives a healthy network whose every layer gets a gradient.
    """
    base = _MobileNetV2(weights=None, include_top=False, pooling="avg", input_shape=input_shape)
    if calibrate:
        bns = _bn_layers(base)
        momenta = [bn.momentum for bn in bns]
        for bn in bns:
            bn.momentum = 0.0
        _model_call(base, _batch(input_shape, 1, n=8, seed=99)[0], training=True)
        for bn, momentum in _zip(bns, momenta):
            bn.momentum = momentum
    return base


def _params(variables):
    return _int(_sum(_int(_np_prod(v.shape)) for v in variables))


def _snapshot(variables):
    return [(v, _np_array(_to_numpy(v), copy=True)) for v in variables]


def _unchanged(snapshot):
    return [v for v, before in snapshot if _np_array_equal(_to_numpy(v), before)]


def _changed(snapshot):
    return [v for v, before in snapshot if not _np_array_equal(_to_numpy(v), before)]


def _owner(layer, variable):
    """The sub-layer (of ``layer``, flattened) that owns ``variable``."""
    for sub in _flatten_layers(layer, include_self=True, recursive=True):
        if _any(w is variable for w in _weights_get(sub)):
            if _type(sub).__name__ not in ("Functional", "Model", "Sequential"):
                return sub
    return None


def _names(variables, limit=4):
    shown = [_getattr(v, "path", _getattr(v, "name", "?")) for v in _list(variables)[:limit]]
    more = _len(variables) - _len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def _batch(input_shape, num_classes, n=4, seed=0):
    rng = _RandomState(seed)
    X = rng.uniform(-1, 1, size=(n, *input_shape)).astype("float32")
    y = _np_eye(num_classes, dtype="float32")[rng.randint(0, num_classes, size=n)]
    return X, y


def _one_step(model, X, y, lr=0.5):
    """One SGD step with the check's own optimizer (eager: no graph to trace for a single step)."""
    _model_compile(model, optimizer=_SGD(learning_rate=lr), loss="categorical_crossentropy", run_eagerly=True)
    _train_on_batch(model, X, y)


def _head_on(base, num_classes=5):
    """The seed's head: a softmax Dense on the base's pooled output, from the base's own input."""
    head = _Dense(num_classes, activation="softmax", name="check_head")
    return _Model(base.inputs[0], head(base.outputs[0])), head


def _is_batchnorm(layer):
    return _isinstance(layer, _BatchNormalization)


def _bn_layers(model):
    return [l for l in _flatten_layers(model, include_self=False, recursive=True) if _is_batchnorm(l)]


def _moving_statistics(model):
    return [v for bn in _bn_layers(model) for v in (bn.moving_mean, bn.moving_variance)]


def _is_model(obj):
    return _isinstance(obj, _Model)


def _learning_rate(optimizer):
    return _float(_to_numpy(optimizer.learning_rate))


# ---- build_base ---------------------------------------------------------------------------------
@_quiet
def check_build_base(build_base):
    """Visible: a pooled MobileNetV2 without its top, at the requested image size."""
    assert _callable(build_base), "build_base is not a function"
    base = build_base()
    assert _is_model(base), f"build_base() should return a keras Model, it returned {_type(base).__name__}"
    assert _tuple(base.inputs[0].shape) == (None, *LESSON_SHAPE), \
        f"build_base() takes {base.inputs[0].shape} images; the lesson uses input_shape={LESSON_SHAPE}"
    out = _tuple(base.outputs[0].shape)
    assert _len(out) == 2, (f"build_base() outputs {out}, a feature map: pass pooling='avg' so each image "
                            "becomes one feature vector")
    assert not _any(l.name == "predictions" for l in _model_layers_get(base)), \
        "build_base() kept the ImageNet classifier: pass include_top=False"
    ref = _reference_base(LESSON_SHAPE)
    assert out == _tuple(ref.outputs[0].shape), f"build_base() outputs {out}, MobileNetV2 gives {ref.outputs[0].shape}"
    assert _len(_model_layers_get(base)) == _len(_model_layers_get(ref)), \
        f"build_base() has {_len(_model_layers_get(base))} layers, MobileNetV2 without top has {_len(_model_layers_get(ref))}"
    return base


@_quiet
def check_build_base_weights(build_base):
    """Hidden: the pre-trained weights chosen by the course setting, all layers trainable, input_shape honoured."""
    from course import keras_tools, weights

    base = build_base()
    assert _len(_trainable_weights_get(base)) == _len(_weights_get(base)) - _len(_moving_statistics(base)), \
        "build_base() should return the base with every layer trainable (freezing is the next exercise)"
    choice = weights.choose("keras")
    if choice.kind != "none":
        expected = keras_tools.mobilenet_v2_base(LESSON_SHAPE, verbose=False)
        mine, ref = _weights_get(base), _weights_get(expected)
        assert _len(mine) == _len(ref), f"build_base() has {_len(mine)} weight tensors, MobileNetV2 has {_len(ref)}"
        same = _sum(1 for a, b in _zip(mine, ref) if _np_array_equal(_to_numpy(a), _to_numpy(b)))
        assert same == _len(ref), (f"build_base() did not load the pre-trained weights ({choice.kind}): only {same} of "
                                   f"{_len(ref)} weight tensors match. Pass weights=mobilenet_v2_weights(), "
                                   "not weights=None (that is training from scratch)")
    other = (64, 64, 3)
    small = build_base(input_shape=other)
    assert _tuple(small.inputs[0].shape) == (None, *other), \
        f"build_base(input_shape={other}) ignored its argument: the model takes {small.inputs[0].shape}"


# ---- freeze_all ---------------------------------------------------------------------------------
@_quiet
def check_freeze_all(freeze_all):
    """Visible: returns the model it was given, with no trainable weights left."""
    assert _callable(freeze_all), "freeze_all is not a function"
    base = _reference_base()
    total = _len(_weights_get(base))
    returned = freeze_all(base)
    assert returned is base, ("freeze_all(model) should return the model it was given (the same object), "
                              f"it returned {_type(returned).__name__}")
    left = _trainable_weights_get(base)
    assert _len(left) == 0, (f"after freeze_all the model still has {_len(left)} trainable weight tensors "
                             f"({_params(left):,} parameters), e.g. {_names(left)}: nothing was frozen there")
    assert _len(_non_trainable_weights_get(base)) == total, \
        f"after freeze_all the model should hold all {total} weight tensors as non-trainable"


@_quiet
def check_freeze_all_behaviour(freeze_all):
    """Hidden: frozen means one training step changes nothing - weights and BatchNorm statistics alike -
    in a plain base, a seed-style model (head included) and a model that nests the base as one layer."""
    # 1. freeze the base, put a trainable head on it, train one step
    base = _reference_base()
    freeze_all(base)
    model, head = _head_on(base)
    X, y = _batch(CHECK_SHAPE, 5)
    before_base, before_head = _snapshot(_weights_get(base)), _snapshot(_weights_get(head))
    _one_step(model, X, y)
    moved = _changed(before_base)
    stats = [v for v in moved if _any(v is s for s in _moving_statistics(base))]
    assert not stats, (f"one training step changed BatchNormalization moving statistics ({_names(stats)}): a layer "
                       "whose variables are non-trainable but whose layer.trainable is still True keeps updating them. "
                       "Set layer.trainable = False (or model.trainable = False), not variable.trainable")
    assert not moved, f"one training step changed weights that freeze_all should have frozen: {_names(moved)}"
    assert _changed(before_head), "the new head on top of the frozen base did not learn in one step"
    # 2. every layer of a model, the last one (a head) included; 3. layers nested inside a layer
    inputs = _Input((8, 8, 3))
    inner = _Model(inputs, _BatchNormalization(name="inner_bn")(_Conv2D(4, 3, name="inner_conv")(inputs)), name="inner")
    outer_inputs = _Input((8, 8, 3))
    x = _GlobalAveragePooling2D()(inner(outer_inputs))
    outer = _Model(outer_inputs, _Dense(5, activation="softmax", name="last_dense")(x))
    freeze_all(outer)
    left = _trainable_weights_get(outer)
    last = [v for v in left if "last_dense" in _str(_getattr(v, "path", ""))]
    assert not last, (f"freeze_all left the model's last layer trainable ({_names(last)}): it must freeze every "
                      "layer of the model it is given, the last one too")
    assert not left, (f"freeze_all left {_names(left)} trainable in a model that nests another model as one layer: "
                      "use layer.trainable = False, which applies to the layers inside a nested model too")
    X, y = _batch((8, 8, 3), 5, seed=1)
    before = _snapshot(_weights_get(outer))
    _one_step(outer, X, y)
    moved = _changed(before)
    assert not moved, f"one training step changed {_names(moved)} in a model freeze_all froze"


# ---- add_head -----------------------------------------------------------------------------------
def _check_head_model(add_head, num_classes, seed, base=None):
    if base is None:
        base = _reference_base()
        _trainable_set(base, False)
    model = add_head(base, num_classes)
    assert _is_model(model), f"add_head should return a keras Model, it returned {_type(model).__name__}"
    assert _tuple(model.outputs[0].shape) == (None, num_classes), \
        f"add_head(base, {num_classes}) outputs {model.outputs[0].shape}, expected (None, {num_classes}): one score per class"
    mine = _set(_id(v) for v in _weights_get(model))
    assert _all(_id(v) in mine for v in _weights_get(base)), \
        "the model from add_head does not use the base it was given: build it on base.input / base.output"
    X, _ = _batch(CHECK_SHAPE, num_classes, seed=seed)
    probs = _to_numpy(_model_call(model, X, training=False))
    assert _np_all(probs >= 0) and _np_allclose(_np_sum(probs, axis=-1), 1.0, atol=1e-4), \
        "the head's outputs are not probabilities: use Dense(num_classes, activation='softmax')"
    return base, model


@_quiet
def check_add_head(add_head):
    """Visible: a keras Model on the given base whose output is one probability per class."""
    assert _callable(add_head), "add_head is not a function"
    _check_head_model(add_head, 5, seed=0)


@_quiet
def check_add_head_behaviour(add_head):
    """Hidden: only the new head is trainable (its kernel and bias), it learns in one step while the frozen
    base stays bit-identical, and the number of classes is not hard-coded."""
    base, model = _check_head_model(add_head, 5, seed=0)
    features = _int(base.outputs[0].shape[-1])  # the check's own MobileNetV2: 1280 pooled features
    expected = features * 5 + 5
    trainable = _trainable_weights_get(model)
    if not trainable:
        raise AssertionError("the model from add_head has no trainable weights: the new head was frozen too. "
                             "Only the base is frozen; the new Dense layer must stay trainable")
    got = _params(trainable)
    assert got == expected, (f"the model from add_head has {got:,} trainable parameters; a new Dense head on the frozen "
                             f"base has {expected:,} (kernel {features}x5 plus 5 biases). Extra trainable: {_names(trainable)}")
    X, y = _batch(CHECK_SHAPE, 5, seed=2)
    before_base = _snapshot(_weights_get(base))
    before_all = _snapshot(_weights_get(model))
    _one_step(model, X, y)
    assert not _changed(before_base), f"one training step changed the frozen base: {_names(_changed(before_base))}"
    assert _changed(before_all), "the new head did not change after one training step: it must be trainable"
    _check_head_model(add_head, 3, seed=3, base=base)


# ---- unfreeze_last --------------------------------------------------------------------------------
def _expected_unfrozen(base, n):
    """From the check's own frozen base, before the student's function runs: (names of the layers that
    should train, their parameter count)."""
    layers = _model_layers_get(base)
    chosen = [l for l in layers[_len(layers) - n:] if not _is_batchnorm(l) and _weights_get(l)]
    return [l.name for l in chosen], _sum(_params(_weights_get(l)) for l in chosen)


def _frozen_base_unfrozen_by(unfreeze_last, n, calibrate=False):
    """A frozen reference base, what it should become, and the student's function applied to it."""
    base = _reference_base(calibrate=calibrate)
    _trainable_set(base, False)
    for layer in _model_layers_get(base):
        _trainable_set(layer, False)
    expected = _expected_unfrozen(base, n)
    unfreeze_last(base, n)
    return base, expected


def _trainable_layers(base):
    """Layers of ``base`` whose weights would train: the layer's own flag, inside the seed-style model."""
    model, head = _head_on(base)
    owners = []
    for v in _trainable_weights_get(model):
        layer = _owner(model, v)
        if layer is not None and layer is not head and layer not in owners:
            owners.append(layer)
    return model, head, owners


@_quiet
def check_unfreeze_last(unfreeze_last):
    """Visible: after unfreeze_last(base, 20) on a frozen base, some of the last layers train, no BatchNorm does."""
    assert _callable(unfreeze_last), "unfreeze_last is not a function"
    base, _ = _frozen_base_unfrozen_by(unfreeze_last, 20)
    _, _, owners = _trainable_layers(base)
    bns = [l.name for l in owners if _is_batchnorm(l)]
    assert not bns, (f"unfreeze_last made BatchNormalization layers trainable ({', '.join(bns[:4])}): keep every "
                     "BatchNormalization layer frozen, or its moving statistics drift to your small batches")
    assert owners, "after unfreeze_last(base, 20) no layer of the base is trainable"


@_quiet
def check_unfreeze_last_behaviour(unfreeze_last):
    """Hidden: exactly the non-BatchNorm layers among the last n train (counts from a reference model), and one
    training step leaves every other weight and every BatchNorm moving statistic bit-identical."""
    for n in (7, 20):  # the last one (calibrated: every layer gets a gradient) also takes a training step
        base, (names, expected) = _frozen_base_unfrozen_by(unfreeze_last, n, calibrate=n == 20)
        model, head, owners = _trainable_layers(base)
        got = [l.name for l in owners]
        bns = [l.name for l in owners if _is_batchnorm(l)]
        assert not bns, f"unfreeze_last(base, {n}) made BatchNormalization layers trainable: {', '.join(bns[:4])}"
        early = [name for name in got if name not in names]
        assert not early, (f"unfreeze_last(base, {n}) made layers before the last {n} trainable ({', '.join(early[:4])}): "
                           "only the last n layers of the base should train")
        missing = [name for name in names if name not in got]
        assert not missing, (f"unfreeze_last(base, {n}) left some of the last {n} layers frozen "
                             f"({', '.join(missing[:4])}): count n layers from the end, base.layers[-n:]")
        params = _params(_trainable_weights_get(model)) - _params(_weights_get(head))
        assert params == expected, (f"after unfreeze_last(base, {n}) the base has {params:,} trainable parameters, "
                                    f"expected {expected:,}")
    X, y = _batch(CHECK_SHAPE, 5, seed=4)
    kept = [v for l in _model_layers_get(base) if l not in owners for v in _weights_get(l)]
    before_kept = _snapshot(kept)
    before_open = _snapshot([v for l in owners for v in _weights_get(l)])
    _one_step(model, X, y, lr=0.1)
    moved = _changed(before_kept)
    assert not moved, f"one training step changed weights that should stay frozen: {_names(moved)}"
    assert _changed(before_open), "one training step changed none of the unfrozen layers"


# ---- compile_for_fine_tuning -------------------------------------------------------------------------
def _small_model(seed=0):
    """A stand-in for backbone + head (the check only needs a Conv, a BatchNorm and a Dense): fast to trace."""
    keras.utils.set_random_seed(seed)
    inputs = _Input((8, 8, 3))
    conv = _Conv2D(4, 3, name="stand_in_conv")
    x = _BatchNormalization(name="stand_in_bn")(conv(inputs))
    x = _GlobalAveragePooling2D()(x)
    return _Model(inputs, _Dense(5, activation="softmax", name="stand_in_head")(x)), conv


def _check_compiled(model, returned, lr):
    assert returned is model, ("compile_for_fine_tuning(model, lr) should return the model it was given, "
                               f"it returned {_type(returned).__name__}")
    optimizer = _getattr(model, "optimizer", None)
    assert optimizer is not None and _getattr(model, "compiled", False), "the model is not compiled: call model.compile(...)"
    assert _isinstance(optimizer, _Adam), f"the optimizer is {_type(optimizer).__name__}, the lesson uses Adam"
    got = _learning_rate(optimizer)
    assert _isclose(got, lr, rel_tol=1e-5), (
        f"the learning rate is {got:g}, expected {lr:g}" +
        (": a learning rate that high makes large updates that wreck the pre-trained features" if got > lr else "") +
        ". Pass learning_rate=lr to Adam")


def _check_loss_and_accuracy(model):
    X, y = _batch((8, 8, 3), 5, n=6, seed=5)
    probs = _np_clip(_to_numpy(_model_call(model, X, training=False)), 1e-7, 1 - 1e-7)
    expected = _float(-_np_sum(y * _np_log(probs)) / _len(y))
    try:
        logs = _model_evaluate(model, X, y, verbose=0, return_dict=True)
    except Exception as error:  # noqa: BLE001 - the student's loss may not accept one-hot labels
        raise AssertionError(f"evaluating with one-hot labels failed ({_type(error).__name__}): the lesson's labels are "
                             "one-hot, use loss='categorical_crossentropy'") from None
    assert _isclose(_float(logs["loss"]), expected, rel_tol=1e-3, abs_tol=1e-4), (
        f"the loss on a batch is {_float(logs['loss']):.4f}, categorical cross-entropy gives {expected:.4f}: "
        "use loss='categorical_crossentropy'")
    assert _any(k in logs for k in ("accuracy", "acc", "categorical_accuracy")), \
        f"the model reports {_sorted(logs)} only: add metrics=['accuracy']"


_sorted = builtins.sorted


@_quiet
def check_compile_for_fine_tuning(compile_for_fine_tuning):
    """Visible: Adam at the default lr of 1e-5, categorical cross-entropy, accuracy."""
    assert _callable(compile_for_fine_tuning), "compile_for_fine_tuning is not a function"
    model, _ = _small_model()
    returned = compile_for_fine_tuning(model)
    _check_compiled(model, returned, 1e-5)
    _check_loss_and_accuracy(model)


@_quiet
def check_compile_for_fine_tuning_behaviour(compile_for_fine_tuning):
    """Hidden: the lr argument is used, and layers unfrozen after an earlier compile and fit really train
    afterwards (Keras keeps the training step it traced: only a new compile picks up new trainable flags)."""
    model, _ = _small_model(seed=1)
    _check_compiled(model, compile_for_fine_tuning(model, lr=3e-4), 3e-4)
    model, conv = _small_model(seed=2)
    X, y = _batch((8, 8, 3), 5, n=8, seed=6)
    eager = _functions_run_eagerly()
    _run_functions_eagerly(False)  # the lesson runs eagerly in quick mode; this check needs a traced step
    try:
        _trainable_set(conv, False)
        _model_compile(model, optimizer=_Adam(1e-3), loss="categorical_crossentropy")
        _train_on_batch(model, X, y)          # head-only phase: Keras traces its training step now
        _trainable_set(conv, True)            # the student then unfreezes a layer...
        compile_for_fine_tuning(model, lr=1e-3)
        before = _snapshot(_weights_get(conv))
        _train_on_batch(model, X, y)
        assert _changed(before), ("a layer unfrozen after the first compile did not train after compile_for_fine_tuning: "
                                  "it must call model.compile(...) again (changing the optimizer's learning rate is "
                                  "not enough, Keras keeps the training step it built at the last compile)")
    finally:
        _run_functions_eagerly(eager)
