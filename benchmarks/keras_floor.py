"""The least time the Keras lesson's experiments can take on this machine: their arithmetic alone.

    .venv/bin/python -m benchmarks.keras_floor

Issue 14 asks for every experiment of steps 6-8 in the Keras lesson and a full "Run all" of at most 90 s. This
benchmark asks whether that can be had by removing overhead. It builds the lesson's models (course backbone,
the split at ``block_9_add``, the last 8 blocks and the head on stored activations, the whole network with
BatchNormalization frozen, a network from scratch with BatchNormalization training at momentum 0.9), times
one training step and one forward pass of each as bare ``tf.function``s (no ``fit``, no callbacks, no
metrics: the least TensorFlow can do per step), and multiplies by the work the lesson's experiments need
(``WORK`` below: epochs and images taken from the notebook; the learning-rate sweep's runs at their minimum,
3 epochs each with ``patience=2``). It adds what cannot be avoided once: ``import tensorflow`` (in a fresh
interpreter), one trace of each kind of step, drawing the lesson's images (``load_arrays``, as its cells do)
and building its MobileNetV2s (``BUILDS``). Then two things the lesson cannot drop without dropping what it
teaches: ``fit`` itself (one step-5 run through ``fit``, with validation and early stopping, minus the same
work as bare steps, times the lesson's ``FIT_RUNS`` runs of the top) and the five graded checks (the source
notebook's solutions checked by ``course.checks.keras``, as its ``correct_*`` cells and the grader do).
Left out, so the total is still a lower bound: the heads trained on stored features, the three
BatchNormalization demonstrations, plots and the kernel's start.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

BATCH = 32
# (what, model, kind, images per epoch or pass, epochs or passes): the lesson's experiments (normal mode)
WORK = [
    ("step 5: last 8 blocks, 8 epochs", "top", "train", 150, 8),
    ("step 6: seeds 1 and 2, 8 epochs each", "top", "train", 150, 16),
    ("step 6: gradual unfreezing, 8 epochs", "top", "train", 150, 8),
    ("step 6: lr / 10 and lr x 10, at least 3 epochs each", "top", "train", 150, 6),
    ("step 6: cosine schedule, 8 epochs", "top", "train", 150, 8),
    ("step 6: head at 10x, 8 epochs", "top", "train", 150, 8),
    ("step 6: augmented images, 8 epochs", "top", "train", 150, 8),
    ("  their validation, 100 images after each epoch", "top", "infer", 100, 62),
    ("step 7: shapes, last 8 blocks, 3 seeds x 8 epochs", "top", "train", 50, 24),
    ("  their validation, 100 images after each epoch", "top", "infer", 100, 24),
    ("step 6: all layers, 3 epochs", "whole", "train", 150, 3),
    ("  its validation", "whole", "infer", 100, 3),
    ("step 7: from scratch, dots, 3 epochs", "scratch", "train", 150, 3),
    ("step 7: from scratch, shapes, 3 epochs", "scratch", "train", 50, 3),
    ("  their training and validation accuracy", "scratch", "infer", 400, 1),
    ("stored activations: dots, 3 augmented copies, shapes", "front", "infer", 850, 1),
    ("stored features: dots; the augmented copies and shapes", "blocks", "infer", 850, 1),
    ("step 8: the test images; the capstone's 60 images", "whole", "infer", 260, 1),
]


# MobileNetV2s the lesson builds, at least: its base (step 1), the two that correct_build_base has the student's
# build_base make (the grader checks two input shapes), and the network from scratch (weights=None)
BUILDS = {"with the course weights": 3, "from scratch": 1}
# fit calls that train the top: step 5, seeds 1-2, gradual (2), the sweep (2), cosine, head at 10x, augmented,
# shapes (3 seeds)
FIT_RUNS = 13
SOURCE = Path(__file__).resolve().parents[1] / "source" / "keras_lesson" / "fine_tuning_keras.ipynb"
ANSWERS = ("build_base", "freeze_all", "add_head", "unfreeze_last", "compile_for_fine_tuning")
# the images the lesson draws: (task, split, per class)
IMAGES = [("dissimilar", "train", 30), ("dissimilar", "val", 20), ("dissimilar", "test", 40),
          ("target", "train", 10), ("target", "val", 20)]


def import_seconds() -> float:
    code = "import time; t = time.perf_counter(); import tensorflow; from tensorflow import keras; print(time.perf_counter() - t)"
    return float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}).stdout.split()[-1])


def models():
    from tensorflow import keras
    from tensorflow.keras.layers import BatchNormalization, Dense
    from tensorflow.keras.models import Model

    from course.keras_tools import load_arrays, mobilenet_v2_base

    X, y = load_arrays("dissimilar", "train", 30)
    base = mobilenet_v2_base(verbose=False)
    whole = Model(base.input, Dense(5, activation="softmax")(base.output))
    for layer in base.layers:
        if isinstance(layer, BatchNormalization):
            layer.trainable = False
    cut = base.get_layer("block_9_add").output
    front, top, blocks = Model(base.input, cut), Model(cut, whole.output), Model(cut, base.output)
    A = front(X[:BATCH], training=False).numpy()
    scratch_base = keras.applications.MobileNetV2(weights=None, include_top=False, pooling="avg",
                                                  input_shape=X.shape[1:])
    for layer in scratch_base.layers:
        if isinstance(layer, BatchNormalization):
            layer.momentum = 0.9
    scratch = Model(scratch_base.input, Dense(5, activation="softmax")(scratch_base.output))
    fine_tune_at = base.layers.index(base.get_layer("block_10_expand"))
    for layer in base.layers[:fine_tune_at]:  # whole-network steps train everything; top steps the last 8 blocks
        layer.trainable = False
    nets = {"top": (top, A), "front": (front, X), "blocks": (blocks, A), "scratch": (scratch, X)}
    return nets, (whole, base, fine_tune_at, X), y


def checks_seconds() -> float:
    """The five graded checks on the source notebook's solutions (its imports cell run first, as in the lesson)."""
    import nbformat

    cells = {cell.metadata.get("nbgrader", {}).get("grade_id"): cell.source
             for cell in nbformat.read(SOURCE, as_version=4).cells}
    namespace: dict = {}
    exec(cells["imports"], namespace)  # noqa: S102 - the course's own notebook
    for name in ANSWERS:
        exec(cells[name], namespace)  # noqa: S102
    start = time.perf_counter()
    for name in ANSWERS:
        getattr(namespace["checks"], f"check_{name}")(namespace[name])
    return time.perf_counter() - start


def fit_seconds(top, A, y, A_val, y_val, epochs=8) -> float:
    """One run of step 5 through ``fit`` as the lesson does it (compiled and built before, validation, the best
    epoch kept), after a warm-up run."""
    from tensorflow import keras

    from course.keras_tools import as_dataset, build_before_fit, restart_optimizer

    top.compile(optimizer=keras.optimizers.Adam(3e-4), loss="categorical_crossentropy", metrics=["accuracy"])
    build_before_fit(top, A, y)
    validation = as_dataset(A_val, y_val, 100, shuffle=False)
    times = []
    for _ in range(3):
        restart_optimizer(top, 3e-4)
        start = time.perf_counter()
        top.fit(as_dataset(A, y, BATCH), validation_data=validation, epochs=epochs, verbose=0,
                callbacks=[keras.callbacks.EarlyStopping(monitor="val_accuracy", patience=epochs,
                                                         restore_best_weights=True)])
        times.append(time.perf_counter() - start)
    return sorted(times[1:])[0]


def seconds_per_call(fn, args, calls=6):
    """(first call, median of the next ``calls``), seconds."""
    start = time.perf_counter()
    fn(*args)
    first = time.perf_counter() - start
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - start)
    return first, sorted(times)[len(times) // 2]


def step_and_forward(net, x, y):
    import tensorflow as tf
    from tensorflow import keras

    variables = net.trainable_variables
    optimizer = keras.optimizers.Adam(3e-4)
    optimizer.build(variables)
    loss_fn = keras.losses.CategoricalCrossentropy()
    spec = [tf.TensorSpec((None, *x.shape[1:]), tf.float32), tf.TensorSpec((None, y.shape[1]), tf.float32)]

    @tf.function(input_signature=spec)
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, net(x, training=True))
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    @tf.function(input_signature=spec[:1])
    def forward(x):
        return net(x, training=False)

    return step, forward


def main() -> None:
    import numpy as np
    import tensorflow as tf

    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})  # as the lesson
    imports = import_seconds()
    from course.keras_tools import load_arrays, mobilenet_v2_base

    start = time.perf_counter()
    for task, split, per_class in IMAGES:
        load_arrays(task, split, per_class)
    images = time.perf_counter() - start
    mobilenet_v2_base(verbose=False)  # the first build loads Keras's application code
    built = {}
    for kind in BUILDS:
        start = time.perf_counter()
        mobilenet_v2_base(verbose=False) if kind != "from scratch" else tf.keras.applications.MobileNetV2(
            weights=None, include_top=False, pooling="avg", input_shape=(96, 96, 3))
        built[kind] = time.perf_counter() - start
    checks = checks_seconds()
    nets, (whole, base, fine_tune_at, X), y_all = models()
    y = y_all[:BATCH]
    X_val, y_val = load_arrays("dissimilar", "val", 20)
    front, top = nets["front"][0], nets["top"][0]
    one_fit = fit_seconds(top, front(X, training=False).numpy(), y_all, front(X_val, training=False).numpy(), y_val)
    per_image, traces = {}, {}
    for name, (net, x) in nets.items():
        step, forward = step_and_forward(net, x[:BATCH], y)
        batch = x[:BATCH].astype(np.float32)
        first_f, f = seconds_per_call(forward, (batch,))
        per_image[name, "infer"] = f / BATCH
        traces[f"{name} forward"] = max(first_f - f, 0.0)
        if name in ("top", "scratch"):
            first_s, s = seconds_per_call(step, (batch, y))
            per_image[name, "train"] = s / BATCH
            traces[f"{name} training step"] = max(first_s - s, 0.0)
    base.trainable = True  # all layers (BatchNormalization stays frozen: its flag is set on the layers)
    for layer in base.layers:
        if layer.__class__.__name__ == "BatchNormalization":
            layer.trainable = False
    step, forward = step_and_forward(whole, X[:BATCH], y)
    batch = X[:BATCH].astype(np.float32)
    first_s, s = seconds_per_call(step, (batch, y))
    first_f, f = seconds_per_call(forward, (batch,))
    per_image["whole", "train"], per_image["whole", "infer"] = s / BATCH, f / BATCH
    traces["whole training step"], traces["whole forward"] = max(first_s - s, 0.0), max(first_f - f, 0.0)

    print(f"per image, seconds (batches of {BATCH}): " + ", ".join(
        f"{net} {kind} {value * 1000:.2f} ms" for (net, kind), value in per_image.items()))
    building = sum(built[kind] * n for kind, n in BUILDS.items())
    total = imports + images + building + sum(traces.values())
    print(f"{imports:6.1f} s  import tensorflow and keras (fresh interpreter)")
    print(f"{images:6.1f} s  drawing the lesson's images: " + ", ".join(f"{t} {s} {n}/class" for t, s, n in IMAGES))
    print(f"{building:6.1f} s  building MobileNetV2: " + ", ".join(
        f"{n} {kind} ({built[kind]:.1f} s each)" for kind, n in BUILDS.items()))
    print(f"{sum(traces.values()):6.1f} s  one trace of each: " + ", ".join(f"{k} {v:.1f}" for k, v in traces.items()))
    for what, net, kind, images, times in WORK:
        seconds = per_image[net, kind] * images * times
        total += seconds
        print(f"{seconds:6.1f} s  {what}")
    print(f"{total:6.1f} s  so far: the arithmetic, the imports, the images, the builds and one trace of each")
    bare = per_image["top", "train"] * 150 * 8 + per_image["top", "infer"] * 100 * 8
    fit_extra = max(one_fit - bare, 0.0) * FIT_RUNS
    total += fit_extra + checks
    print(f"{fit_extra:6.1f} s  fit's own work: one step-5 run takes {one_fit:.1f} s through fit, {bare:.1f} s as bare"
          f" steps; {FIT_RUNS} runs of the top")
    print(f"{checks:6.1f} s  the five graded checks on the solutions")
    print(f"{total:6.1f} s  in all: the least the Keras lesson's experiments take here, against 90 s for the whole"
          f" lesson; load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
