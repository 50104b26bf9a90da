"""What the first ``fit`` after a ``compile`` costs in the Keras lesson, and how much of it is variable creation.

    .venv/bin/python -m benchmarks.keras_first_fit            # each way in a fresh interpreter

The lesson's step 5 model (the last 8 blocks of MobileNetV2 and the head, on stored activations of the frozen
front, 150 training images, batch 32), compiled, then fitted three times for 2 epochs. Four ways:

* ``plain``: as the lesson does it. With the TensorFlow backend and no distribution strategy, Keras 3 creates
  the optimizer's slots and the metrics' variables inside the first trace of the training step; TensorFlow
  then traces the step a second time, without variable creation;
* ``optimizer``: ``model.optimizer.build(model.trainable_variables)`` before the first ``fit``;
* ``public``: the course's ``keras_tools.build_before_fit`` (what the lesson does), the same with public
  methods: the model, its loss and its metrics called once on two examples (``compute_loss``,
  ``compute_metrics``: their variables are created eagerly), the metrics reset, the optimizer built;
* ``symbolic``: Keras's own symbolic build (optimizer, loss and metrics), a private method
  (``Model._symbolic_build``), before the first ``fit``: one trace.

It prints the seconds of each ``fit``; the first one minus the later ones is what the graph costs.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

WAYS = ("plain", "optimizer", "public", "symbolic")


def measure(way: str) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf
    from tensorflow.keras.layers import Dense
    from tensorflow.keras.models import Model
    from tensorflow.keras.optimizers import Adam

    from course.keras_tools import as_dataset, build_before_fit, load_arrays, mobilenet_v2_base, restart_optimizer

    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})  # as the lesson
    X, y = load_arrays("dissimilar", "train", 30)
    X_val, y_val = load_arrays("dissimilar", "val", 20)
    base = mobilenet_v2_base((96, 96, 3), verbose=False)
    model = Model(base.input, Dense(5, activation="softmax")(base.output))
    fine_tune_at = base.layers.index(base.get_layer("block_10_expand"))
    for layer in base.layers[:fine_tune_at]:
        layer.trainable = False
    cut = base.get_layer("block_9_add").output
    front, top = Model(base.input, cut), Model(cut, model.output)
    A, A_val = front.predict(X, batch_size=100, verbose=0), front.predict(X_val, batch_size=100, verbose=0)
    top.compile(optimizer=Adam(3e-4), loss="categorical_crossentropy", metrics=["accuracy"])
    start = time.perf_counter()
    if way in ("optimizer", "symbolic"):
        top.optimizer.build(top.trainable_variables)
    if way == "public":
        build_before_fit(top, A, y)
    if way == "symbolic":
        top._symbolic_build(data_batch=(A[:2], y[:2]))
    built = time.perf_counter() - start
    fits = []
    for _ in range(3):
        start = time.perf_counter()
        top.fit(as_dataset(A, y, 32), validation_data=as_dataset(A_val, y_val, 100, shuffle=False), epochs=2, verbose=0)
        fits.append(time.perf_counter() - start)
        restart_optimizer(top)
    print(f"{way:10s} build before fit {built:5.2f} s | fit 1: {fits[0]:5.2f} s, fit 2: {fits[1]:5.2f} s, fit 3: "
          f"{fits[2]:5.2f} s | first fit's extra: {fits[0] - min(fits[1:]):5.2f} s", flush=True)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] in WAYS:
        measure(sys.argv[1])
        return 0
    print(f"load average {os.getloadavg()[0]:.1f}, {os.cpu_count()} cores", flush=True)
    for way in WAYS:
        done = subprocess.run([sys.executable, "-m", "benchmarks.keras_first_fit", way])
        if done.returncode:
            return done.returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
