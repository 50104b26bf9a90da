"""Checks for the Keras lesson's exercises: each calls your function on real Keras models and judges what it does.

Each ``check_*`` function tests exactly the contract its exercise states (in the lesson and in the answer
cell's docstring). It calls your function the way the grader does (``course.checks.wire.call``: on a copy
of the model rebuilt from plain data, so the verdict here is the verdict at grading time), judges the
models it gets back by what they do (a real training step, a real prediction) and raises AssertionError
with a message that names the mistake. Expected numbers come from reference models the check builds.

Where the weights and the architecture do not matter (which layers train, what one step changes) the
checks use a small stand-in base built like MobileNetV2 (convolutions, BatchNormalization, ReLU6, a
residual connection, average pooling), with random weights on 32x32 images: quick to build and step, and
any function that fulfils the contract works on it as on MobileNetV2. ``check_build_base`` compares your
base with MobileNetV2 and the course's weights.
"""
from __future__ import annotations

import contextlib
import math
import os
import warnings

import numpy
import tensorflow as tf
from tensorflow import keras

from course.checks.wire import StudentCodeError, call

CHECK_SHAPE = (32, 32, 3)   # small inputs for checks where the weights and image size do not matter
LESSON_SHAPE = (96, 96, 3)  # the lesson's image size


@contextlib.contextmanager
def quiet():
    """Keras warnings raised while a check runs (e.g. "no trainable weights" when it steps a frozen model)
    stay off stderr, where `nbgrader validate` would count them as a failure."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# ---- models and data the checks build ---------------------------------------------------------------
def stand_in_base(calibrate=False):
    """A small base built like MobileNetV2 (ends in BatchNormalization layers, then average pooling). With
    ``calibrate`` every BatchNormalization's moving statistics are those of one random batch, so that every
    layer gets a real gradient."""
    keras.utils.set_random_seed(0)
    layers = keras.layers
    inputs = keras.Input(CHECK_SHAPE, name="stand_in_input")
    x = layers.ReLU(6.0, name="conv1_relu")(layers.BatchNormalization(name="conv1_bn")(
        layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False, name="conv1")(inputs)))
    y = layers.ReLU(6.0, name="block1_depthwise_relu")(layers.BatchNormalization(name="block1_depthwise_bn")(
        layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="block1_depthwise")(x)))
    y = layers.BatchNormalization(name="block1_project_bn")(layers.Conv2D(8, 1, use_bias=False, name="block1_project")(y))
    x = layers.Add(name="block1_add")([x, y])
    x = layers.ReLU(6.0, name="last_relu")(layers.BatchNormalization(name="last_bn")(
        layers.Conv2D(16, 1, use_bias=False, name="last_conv")(x)))
    base = keras.Model(inputs, layers.GlobalAveragePooling2D(name="pool")(x), name="stand_in_base")
    if calibrate:
        norms = batch_norms(base)
        momenta = [bn.momentum for bn in norms]
        for bn in norms:
            bn.momentum = 0.0
        base(batch(CHECK_SHAPE, 1, n=8, seed=99)[0], training=True)
        for bn, momentum in zip(norms, momenta):
            bn.momentum = momentum
    return base


def frozen_base(calibrate=False):
    base = stand_in_base(calibrate=calibrate)
    base.trainable = False
    return base


def small_model(seed=0):
    """A stand-in for backbone + head (a Conv, a BatchNorm and a Dense): fast to compile and train."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.BatchNormalization(name="stand_in_bn")(keras.layers.Conv2D(4, 3, name="stand_in_conv")(inputs))
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(5, activation="softmax", name="stand_in_head")(x))


def nested_model():
    """A model that holds another model as one of its layers, and ends in a Dense layer."""
    keras.utils.set_random_seed(1)
    inputs = keras.Input((8, 8, 3))
    inner = keras.Model(inputs, keras.layers.BatchNormalization(name="inner_bn")(
        keras.layers.Conv2D(4, 3, name="inner_conv")(inputs)), name="inner")
    outer_inputs = keras.Input((8, 8, 3))
    x = keras.layers.GlobalAveragePooling2D()(inner(outer_inputs))
    return keras.Model(outer_inputs, keras.layers.Dense(5, activation="softmax", name="last_dense")(x))


def head_on(base, num_classes=5):
    """The seed's head, built by the check: a softmax Dense on the base's output."""
    head = keras.layers.Dense(num_classes, activation="softmax", name="check_head")
    return keras.Model(base.inputs[0], head(base.outputs[0])), head


def batch(input_shape, num_classes, n=4, seed=0):
    rng = numpy.random.RandomState(seed)
    X = rng.uniform(-1, 1, size=(n, *input_shape)).astype("float32")
    y = numpy.eye(num_classes, dtype="float32")[rng.randint(0, num_classes, size=n)]
    return X, y


def one_step(model, X, y, lr=0.5):
    """One SGD step with the check's own optimizer."""
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=lr), loss="categorical_crossentropy", run_eagerly=True)
    model.train_on_batch(X, y)


def all_layers(model):
    """Every layer inside ``model`` (nested models' layers too), not the model itself."""
    return [layer for layer in model._flatten_layers(include_self=False, recursive=True)]


def leaves(model):
    """The layers inside ``model`` that hold weights of their own (not models)."""
    return [layer for layer in all_layers(model) if not isinstance(layer, keras.Model) and layer.weights]


def batch_norms(model):
    return [layer for layer in all_layers(model) if isinstance(layer, keras.layers.BatchNormalization)]


def snapshot(variables):
    return [(v, numpy.array(v.numpy(), copy=True)) for v in variables]


def changed(saved):
    return [v for v, before in saved if not numpy.array_equal(v.numpy(), before)]


def count(variables):
    return int(sum(math.prod(v.shape) for v in variables))


def names(items, limit=4):
    shown = [getattr(item, "path", None) or getattr(item, "name", "?") for item in list(items)[:limit]]
    more = len(items) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def is_model(value):
    return isinstance(value, keras.Model)


@contextlib.contextmanager
def weights_setting(value):
    """Run with FTLAB_WEIGHTS=value unless an instructor chose a setting other than the default."""
    old = os.environ.get("FTLAB_WEIGHTS")
    if old in (None, "", "auto"):
        os.environ["FTLAB_WEIGHTS"] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("FTLAB_WEIGHTS", None)
        else:
            os.environ["FTLAB_WEIGHTS"] = old


# ---- Exercise: build_base --------------------------------------------------------------------------
def call_build_base(build_base, **kwargs):
    try:
        return call(build_base, **kwargs)
    except StudentCodeError as error:
        text = str(error)
        if "imagenet" in text.lower() or "url fetch" in text.lower() or "http" in text.lower():
            raise AssertionError("build_base asked for the ImageNet weights, which cannot be downloaded here (the grader "
                                 "has no internet): pass weights=mobilenet_v2_weights(), which picks ImageNet where it "
                                 f"can be had and the course's weights otherwise. ({text[:300]})") from None
        raise


def check_build_base(build_base):
    """build_base(input_shape=(96, 96, 3)) returns a new MobileNetV2 without its top, average-pooled, for
    images of ``input_shape``, with the weights the course setting chooses (weights=mobilenet_v2_weights()),
    every layer trainable as loaded."""
    from course import keras_tools

    with quiet(), weights_setting("course"):
        base = call_build_base(build_base)
        assert is_model(base), f"build_base() should return a keras Model, it returned {type(base).__name__}"
        assert tuple(base.inputs[0].shape) == (None, *LESSON_SHAPE), \
            f"build_base() takes {base.inputs[0].shape} images; the lesson uses input_shape={LESSON_SHAPE}"
        assert not any(layer.name == "predictions" for layer in base.layers), \
            "build_base() kept the ImageNet classifier: pass include_top=False"
        out = tuple(base.outputs[0].shape)
        assert len(out) == 2, f"build_base() outputs {out}, a feature map: pass pooling='avg' so each image becomes one vector"
        reference = keras_tools.mobilenet_v2_base(LESSON_SHAPE, verbose=False)
        assert len(base.layers) == len(reference.layers) and out == tuple(reference.outputs[0].shape), \
            f"build_base() has {len(base.layers)} layers and outputs {out}; MobileNetV2 without its top has " \
            f"{len(reference.layers)} layers and outputs {tuple(reference.outputs[0].shape)}"
        pooling = type(base.layers[-1]).__name__
        assert pooling == "GlobalAveragePooling2D", \
            f"build_base() ends in {pooling}: pass pooling='avg' (the average of each feature map), not 'max'"
        mine, theirs = base.weights, reference.weights
        same = sum(1 for a, b in zip(mine, theirs) if numpy.array_equal(a.numpy(), b.numpy()))
        assert same == len(theirs), (
            f"build_base() did not load the weights the course setting chooses: only {same} of {len(theirs)} weight "
            "tensors match. Pass weights=mobilenet_v2_weights() (not weights=None, which is training from scratch, "
            "and not a hard-coded 'imagenet', which the grader cannot download)")
        frozen = [layer.name for layer in base.layers if not layer.trainable]
        assert base.trainable and not frozen, (f"build_base() should return the base with every layer trainable "
                                               f"(freezing is the next exercise); frozen: {', '.join(frozen[:4])}")
        X, _ = batch(LESSON_SHAPE, 1, n=2)
        assert numpy.allclose(base(X, training=False), reference(X, training=False), atol=1e-5), \
            "build_base()'s model computes something else than MobileNetV2 with the course weights"
        other = (64, 64, 3)
        small = call_build_base(build_base, input_shape=other)
        assert tuple(small.inputs[0].shape) == (None, *other), \
            f"build_base(input_shape={other}) ignored its argument: the model takes {small.inputs[0].shape}"


# ---- Exercise: freeze_all -------------------------------------------------------------------------
def check_freeze_all(freeze_all):
    """freeze_all(model) sets trainable = False on every layer of ``model`` (nested layers and the last layer
    included) and returns the same model; a training step then changes none of its weights, BatchNormalization
    statistics included."""
    with quiet():
        base = stand_in_base(calibrate=True)
        returned = call(freeze_all, base)
        still = [layer.name for layer in leaves(base) if layer.trainable]
        if still and not base.trainable_weights:
            raise AssertionError(
                f"freeze_all marked the weights non-trainable but left {len(still)} layers trainable ({', '.join(still[:3])}): "
                "a BatchNormalization layer that is still trainable keeps updating its moving statistics in training. "
                "Set layer.trainable = False (model.trainable = False does it for every layer)")
        assert not still, f"after freeze_all, {len(still)} layers are still trainable: {', '.join(still[:4])}"
        assert returned is base, ("freeze_all(model) should return the model it was given (the same object), "
                                  f"it returned {type(returned).__name__}")
        model, head = head_on(base)
        X, y = batch(CHECK_SHAPE, 5)
        before_base, before_head = snapshot(base.weights), snapshot(head.weights)
        one_step(model, X, y)
        moved = changed(before_base)
        assert not moved, f"one training step changed weights that freeze_all should have frozen: {names(moved)}"
        assert changed(before_head), "the new head on top of the frozen base did not learn in one step"
        outer = nested_model()
        call(freeze_all, outer)
        left = [layer.name for layer in leaves(outer) if layer.trainable]
        assert "last_dense" not in left, ("freeze_all left the model's last layer trainable: it must freeze every "
                                          "layer of the model it is given, the last one too")
        assert not left, (f"freeze_all left {', '.join(left[:3])} trainable in a model that holds another model as a "
                          "layer: layer.trainable = False applies to the layers inside a nested model too")


# ---- Exercise: add_head -----------------------------------------------------------------------------
def check_add_head(add_head):
    """add_head(base, num_classes) returns a new keras Model from the base's input to a new
    Dense(num_classes, activation="softmax") on the base's pooled output, built on the base it was given,
    changing no layer's trainable flag; only the new layer trains (the base given is frozen)."""
    with quiet():
        base = frozen_base()
        flags = [layer.trainable for layer in [base, *all_layers(base)]]
        for num_classes in (5, 3):
            model = call(add_head, base, num_classes)
            assert is_model(model), f"add_head should return a keras Model, it returned {type(model).__name__}"
            assert tuple(model.outputs[0].shape) == (None, num_classes), \
                f"add_head(base, {num_classes}) outputs {model.outputs[0].shape}, expected (None, {num_classes})"
            mine = {id(v) for v in model.weights}
            assert all(id(v) in mine for v in base.weights), \
                "the model from add_head does not use the base it was given: build it on base.input and base.output"
            assert [layer.trainable for layer in [base, *all_layers(base)]] == flags, \
                "add_head changed trainable flags of the base; freezing and unfreezing are other exercises"
            X, _ = batch(CHECK_SHAPE, num_classes, seed=num_classes)
            probs = numpy.asarray(model(X, training=False))
            assert numpy.all(probs >= 0) and numpy.allclose(probs.sum(axis=-1), 1.0, atol=1e-4), \
                "the head's outputs are not probabilities: use Dense(num_classes, activation='softmax')"
            trainable = model.trainable_weights
            assert trainable, ("the model from add_head has no trainable weights: the new head was frozen too. Only "
                               "the base is frozen; the new Dense layer must stay trainable")
            features = int(base.outputs[0].shape[-1])
            expected = features * num_classes + num_classes
            assert count(trainable) == expected, (
                f"the model from add_head has {count(trainable):,} trainable parameters; a new Dense head on the frozen "
                f"base has {expected:,} (kernel {features}x{num_classes} plus {num_classes} biases): {names(trainable)}")
        X, y = batch(CHECK_SHAPE, 3, seed=2)
        before_base, before_all = snapshot(base.weights), snapshot(model.weights)
        one_step(model, X, y)
        assert not changed(before_base), f"one training step changed the frozen base: {names(changed(before_base))}"
        assert changed(before_all), "the new head did not change after one training step: it must be trainable"


# ---- Exercise: unfreeze_last --------------------------------------------------------------------------
def layers_with_weights(base):
    return [layer for layer in base.layers if layer.weights]


def expected_unfrozen(base, n):
    """Names of the layers (with weights) that should train after unfreeze_last(base, n)."""
    last = base.layers[max(0, len(base.layers) - n):] if n > 0 else []
    return [layer.name for layer in last if layer.weights and not isinstance(layer, keras.layers.BatchNormalization)]


def all_frozen_base(calibrate=False):
    base = frozen_base(calibrate)
    for layer in base.layers:
        layer.trainable = False
    return base


def check_unfreeze_last(unfreeze_last):
    """unfreeze_last(base, n) makes the last n layers of ``base.layers`` trainable except BatchNormalization
    layers, which stay frozen; every other layer keeps its flag; n=0 changes nothing and n larger than the
    number of layers means all of them; it returns ``base``. Then a training step moves exactly those layers."""
    with quiet():
        size = len(stand_in_base().layers)
        for n in (4, 9, 0, size + 10):
            base = all_frozen_base(calibrate=n == 9)
            returned = call(unfreeze_last, base, n)
            want = expected_unfrozen(base, n)
            got = [layer.name for layer in layers_with_weights(base) if layer.trainable]
            bns = [name for name in got if isinstance(base.get_layer(name), keras.layers.BatchNormalization)]
            assert not bns, (f"unfreeze_last(base, {n}) made BatchNormalization layers trainable ({', '.join(bns[:3])}): keep "
                             "every BatchNormalization layer frozen, or its moving statistics drift to your small batches")
            if n == 0 and got:
                raise AssertionError("unfreeze_last(base, 0) unfroze layers: base.layers[-0:] is the whole list, not an "
                                     "empty one; take the layers from index len(base.layers) - n")
            if n > size and got == expected_unfrozen(base, n - size):
                raise AssertionError(f"unfreeze_last(base, {n}) with more than the {size} layers there are unfroze only "
                                     f"the last {n - size}: len(base.layers) - n is negative, and a negative start "
                                     "counts from the end; start at max(0, len(base.layers) - n)")
            early = [name for name in got if name not in want]
            assert not early, (f"unfreeze_last(base, {n}) made layers before the last {n} trainable "
                               f"({', '.join(early[:4])}): only the last n layers of the base should train")
            missing = [name for name in want if name not in got]
            assert not missing, (f"unfreeze_last(base, {n}) left some of the last {n} layers frozen "
                                 f"({', '.join(missing[:4])}): count n layers from the end of base.layers")
            assert returned is base, f"unfreeze_last(base, n) should return base, it returned {type(returned).__name__}"
            if n == 9:
                model, head = head_on(base)
                opened = [v for name in want for v in base.get_layer(name).weights]
                kept = [v for v in base.weights if all(v is not w for w in opened)]
                before_kept, before_open = snapshot(kept), snapshot(opened)
                X, y = batch(CHECK_SHAPE, 5, seed=4)
                one_step(model, X, y, lr=0.1)
                assert not changed(before_kept), f"one training step changed weights that should stay frozen: {names(changed(before_kept))}"
                assert changed(before_open), "one training step changed none of the unfrozen layers"


# ---- Exercise: compile_for_fine_tuning -------------------------------------------------------------------
def check_compiled(model, returned, lr):
    assert returned is model, ("compile_for_fine_tuning(model, lr) should return the model it was given, "
                               f"it returned {type(returned).__name__}")
    optimizer = getattr(model, "optimizer", None)
    assert optimizer is not None and getattr(model, "compiled", False), "the model is not compiled: call model.compile(...)"
    assert isinstance(optimizer, keras.optimizers.Adam), f"the optimizer is {type(optimizer).__name__}, the lesson uses Adam"
    got = float(numpy.asarray(optimizer.learning_rate))
    assert math.isclose(got, lr, rel_tol=1e-5), (
        f"the learning rate is {got:g}, expected {lr:g}" +
        (": a learning rate that high makes large updates that wreck the pre-trained features" if got > lr else "") +
        ". Pass learning_rate=lr to Adam")
    X, y = batch((8, 8, 3), 5, n=6, seed=5)
    probs = numpy.clip(numpy.asarray(model(X, training=False)), 1e-7, 1 - 1e-7)
    expected = float(-numpy.sum(y * numpy.log(probs)) / len(y))
    try:
        logs = model.evaluate(X, y, verbose=0, return_dict=True)
    except Exception as error:  # noqa: BLE001 - the student's loss may not accept one-hot labels
        raise AssertionError(f"evaluating with one-hot labels failed ({type(error).__name__}): the lesson's labels are "
                             "one-hot, use loss='categorical_crossentropy'") from None
    assert math.isclose(float(logs["loss"]), expected, rel_tol=1e-3, abs_tol=1e-4), (
        f"the loss on a batch is {float(logs['loss']):.4f}, categorical cross-entropy gives {expected:.4f}: "
        "use loss='categorical_crossentropy'")
    assert any(k in logs for k in ("accuracy", "acc", "categorical_accuracy")), \
        f"the model reports {sorted(logs)} only: add metrics=['accuracy']"


def check_compile_for_fine_tuning(compile_for_fine_tuning):
    """compile_for_fine_tuning(model, lr=1e-5) compiles ``model`` with Adam(learning_rate=lr),
    loss="categorical_crossentropy" and metrics=["accuracy"], changes no trainable flag and returns the
    model; layers unfrozen after an earlier compile really train afterwards."""
    with quiet():
        model = small_model()
        model.trainable = False  # as after freeze_all, with the head unfrozen again
        model.get_layer("stand_in_head").trainable = True
        flags = [layer.trainable for layer in [model, *all_layers(model)]]
        check_compiled(model, call(compile_for_fine_tuning, model), 1e-5)
        assert [layer.trainable for layer in [model, *all_layers(model)]] == flags, (
            "compile_for_fine_tuning changed trainable flags (e.g. model.trainable = True unfreezes every layer, "
            "BatchNormalization too): it should only compile")
        model = small_model(seed=1)
        check_compiled(model, call(compile_for_fine_tuning, model, lr=3e-4), 3e-4)
        model = small_model(seed=2)
        conv = model.get_layer("stand_in_conv")
        X, y = batch((8, 8, 3), 5, n=8, seed=6)
        eager = tf.config.functions_run_eagerly()
        tf.config.run_functions_eagerly(False)  # the lesson runs eagerly in quick mode; this check needs a traced step
        try:
            conv.trainable = False
            model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="categorical_crossentropy")
            model.train_on_batch(X, y)          # head-only phase: Keras traces its training step now
            conv.trainable = True               # the student then unfreezes a layer...
            call(compile_for_fine_tuning, model, lr=1e-3)
            before = snapshot(conv.weights)
            model.train_on_batch(X, y)
            assert changed(before), ("a layer unfrozen after the first compile did not train after compile_for_fine_tuning: "
                                     "it must call model.compile(...) again (changing the optimizer's learning rate is "
                                     "not enough, Keras keeps the training step it built at the last compile)")
        finally:
            tf.config.run_functions_eagerly(eager)
