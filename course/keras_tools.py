"""Keras side of the course: data in the form Keras expects and MobileNetV2 with the chosen weights.

Imports TensorFlow. Never import this module and ``course.torch_tools`` in one process with
TensorFlow first: on some machines ``import tensorflow`` then ``import torchvision`` crashes.
"""
from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # keep TensorFlow's C++ log lines off stderr

import numpy as np
import tensorflow as tf
from tensorflow import keras

from course import data, weights

tf.get_logger().setLevel("ERROR")
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


def load_image_folder(path, batch_size=16, seed=0):
    """A class-per-folder tree of images (yours or ``data.write_image_folder``'s), ready for MobileNetV2."""
    ds = keras.utils.image_dataset_from_directory(
        path, image_size=IMAGE_SHAPE[:2], batch_size=batch_size, label_mode="categorical", seed=seed, verbose=False)
    return ds.map(lambda X, y: (keras.applications.mobilenet_v2.preprocess_input(X), y))


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
