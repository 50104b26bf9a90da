"""Keras side of the course: data in the form Keras expects and MobileNetV2 with the chosen weights.

Imports TensorFlow. Never import this module and ``course.torch_tools`` in one process with
TensorFlow first: on some machines ``import tensorflow`` then ``import torchvision`` crashes.
"""
from __future__ import annotations

import os
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # keep TensorFlow's C++ log lines off stderr

import numpy as np
import tensorflow as tf
from tensorflow import keras

from course import data, weights

tf.get_logger().setLevel("ERROR")
# fit() warns that its shuffle=True is ignored for a tf.data.Dataset; as_dataset shuffles the data itself.
warnings.filterwarnings("ignore", message=".*`shuffle=True` was passed, but will be ignored.*")
IMAGE_SHAPE = (data.IMAGE_SIZE, data.IMAGE_SIZE, 3)


def preprocess(images):
    """uint8 images -> the float inputs MobileNetV2 expects in Keras (scaled to [-1, 1])."""
    return keras.applications.mobilenet_v2.preprocess_input(np.asarray(images, dtype="float32"))


def load_arrays(task="target", split="train", per_class=None, seed=0):
    """``X`` preprocessed float32 (N, 96, 96, 3) and ``y`` one-hot float32 (N, classes)."""
    images, labels = data.load_task(task, split, per_class, seed)
    return preprocess(images), keras.utils.to_categorical(labels, len(data.TASKS[task])).astype("float32")


def load_dataset(task="target", split="train", per_class=None, seed=0, batch_size=16, shuffle=True):
    """The same split as a batched ``tf.data.Dataset`` of (X, y)."""
    X, y = load_arrays(task, split, per_class, seed)
    ds = tf.data.Dataset.from_tensor_slices((X, y))
    if shuffle:
        ds = ds.shuffle(len(X), seed=seed)
    return ds.batch(batch_size)


def load_image_folder(path, batch_size=16, seed=0, shuffle=True):
    """A class-per-folder tree of images (yours or ``data.write_image_folder``'s), ready for MobileNetV2.

    Batches of (X, one-hot y); ``.class_names`` lists the classes, in the order of the labels."""
    ds = keras.utils.image_dataset_from_directory(path, image_size=IMAGE_SHAPE[:2], batch_size=batch_size,
                                                  label_mode="categorical", seed=seed, shuffle=shuffle, verbose=False)
    class_names = ds.class_names
    ds = ds.map(lambda X, y: (keras.applications.mobilenet_v2.preprocess_input(X), y))
    ds.class_names = class_names
    return ds


def as_dataset(X, y, batch_size=32, shuffle=True):
    """Arrays (X, y) as a batched ``tf.data.Dataset``, in a new random order every epoch if ``shuffle``.

    ``fit`` runs faster on a dataset than on NumPy arrays, which it converts again at every call. ``X`` may
    also be a list of versions of the same images (augmented copies, equally long): each epoch then sees every
    image once, as one of its versions picked at random.
    """
    if isinstance(X, (list, tuple)):
        versions = len(X)
        ds = tf.data.Dataset.from_tensor_slices((np.stack(X, axis=1), y))
        if shuffle:
            ds = ds.shuffle(len(y))
        ds = ds.map(lambda x, label: (x[tf.random.uniform([], 0, versions, tf.int32)], label))
    else:
        ds = tf.data.Dataset.from_tensor_slices((X, y))
        if shuffle:
            ds = ds.shuffle(len(y))
    return ds.batch(batch_size)


def restart_optimizer(model, learning_rate=None):
    """Start the optimizer of a compiled ``model`` afresh (step count and moments back to zero), optionally at
    a new learning rate: what a new ``compile`` would do, without rebuilding the training step (which costs
    seconds). Only valid while the same layers are trainable as at ``compile``; after changing ``trainable``,
    compile again."""
    optimizer = model.optimizer
    rate = float(optimizer.learning_rate) if learning_rate is None else learning_rate
    for variable in optimizer.variables:
        variable.assign(tf.zeros_like(variable))
    optimizer.learning_rate.assign(rate)


def build_before_fit(model, X, y):
    """Create a compiled ``model``'s optimizer, loss and metric variables now, on two examples, so that the next
    ``fit`` traces its training step once. Left to ``fit``, Keras 3 (TensorFlow backend) creates them inside
    the first trace and TensorFlow then traces the step again: 6.7-7.7 s more on the lesson's step-5 model
    (``python -m benchmarks.keras_first_fit``). Changes no weight; the metrics are reset afterwards."""
    predicted = model(X[:2], training=False)
    model.compute_loss(x=X[:2], y=y[:2], y_pred=predicted)
    model.compute_metrics(X[:2], y[:2], predicted, sample_weight=None)
    model.reset_metrics()
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    return model


class GroupAdam(keras.optimizers.Adam):
    """Adam with its own learning rate for each group of variables, like PyTorch's parameter groups.

    ``groups`` maps a group name to its variables (every trainable variable of the model must be in one),
    ``rates`` maps the same names to learning rates. ``optimizer.rates[name]`` is a variable: ``assign`` a
    new rate between runs, no compile needed. A rate of 0 keeps a group where it is.
    """

    def __init__(self, groups, rates, **kwargs):
        super().__init__(learning_rate=1.0, **kwargs)
        self.rates = {name: tf.Variable(float(rate), trainable=False) for name, rate in rates.items()}
        self._group_of = {self._var_key(v): name for name, variables in groups.items() for v in variables}

    def update_step(self, gradient, variable, learning_rate):
        return super().update_step(gradient, variable, self.rates[self._group_of[self._var_key(variable)]])


def mobilenet_v2_weights(verbose=True):
    """The value to pass as ``MobileNetV2(weights=...)`` under the course setting, printed for the student."""
    choice = weights.choose("keras")
    if verbose:
        print(choice)
    if choice.kind == "imagenet":
        return "imagenet"
    return None if choice.kind == "none" else str(choice.path)


def mobilenet_v2_base(input_shape=IMAGE_SHAPE, verbose=True):
    """The lesson's base model: MobileNetV2 without its top, global-average pooled, chosen weights."""
    return keras.applications.MobileNetV2(weights=mobilenet_v2_weights(verbose), include_top=False,
                                          pooling="avg", input_shape=input_shape)
