"""What pre-training and fine-tuning are worth: the course's transfer figures, several seeds, both frameworks.

    python -m benchmarks.transfer                 # both frameworks, each in its own process
    python -m benchmarks.transfer torch           # one framework
    python -m benchmarks.transfer --seeds 0 1 2 --scratch-epochs 30

The recipe of the lessons, on the two tasks they use, with the lessons' splits (training images per class as
below, 20 validation and 40 test images per class):

* dots (``dissimilar``, 30 training images per class): the task the lessons fine-tune on;
* shapes (``target``, 10 training images per class): close to the course backbone's pre-training shapes.

For each seed: a new head on the frozen pre-trained backbone's pooled features (feature extraction), Adam at
1e-3 for 30 epochs; then the last 8 blocks unfrozen (BatchNorm statistics kept fixed) and fine-tuned with the head
at 3e-4 for 8 epochs, on stored activations of the frozen front, exactly as in the lessons. Each run keeps its best
epoch on the validation images; the table gives its accuracy on the test images (mean ± sample standard
deviation over the seeds, and min-max). "From scratch" is the same network from random weights, every layer
training (BatchNorm statistics following the data: PyTorch momentum 0.1, Keras momentum 0.9), Adam at 1e-3, for
--scratch-epochs epochs on the same images: a budget far larger than the lessons can afford in a notebook, to see
what random weights reach when given time. Weights follow FTLAB_WEIGHTS (default auto: ImageNet if cached, else the
course backbone). Seconds are wall time on this machine, all seeds together.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

TASKS = {"dots": ("dissimilar", 30), "shapes": ("target", 10)}
VAL_PER_CLASS, TEST_PER_CLASS = 20, 40
HEAD_EPOCHS, HEAD_LR, FINE_EPOCHS, FINE_LR, BATCH = 30, 1e-3, 8, 3e-4, 32
SCRATCH_LR = 1e-3


def spread(values):
    values = [100 * v for v in values]
    if len(values) == 1:
        return f"{values[0]:5.1f}% (1 seed)"
    return (f"{statistics.mean(values):5.1f} ± {statistics.stdev(values):3.1f}% "
            f"({len(values)} seeds, {min(values):.1f}-{max(values):.1f})")


# ---------------------------------------------------------------------------------------------- PyTorch
def run_torch(task, per_class, seeds, scratch_epochs):
    import copy

    import torch
    import torchvision
    from torch import nn

    from course import torch_tools

    splits = {s: torch_tools.ShapesDataset(task, s, n) for s, n in
              (("train", per_class), ("val", VAL_PER_CLASS), ("test", TEST_PER_CLASS))}
    num_classes = len(splits["train"].classes)
    model = torch_tools.mobilenet_v2_pretrained(verbose=False).eval()
    cut = len(model.features) - 8
    with torch.no_grad():
        A = {s: model.features[:cut](d.X) for s, d in splits.items()}
        F = {s: model.features[cut:](a).mean((2, 3)) for s, a in A.items()}
    y = {s: d.y for s, d in splits.items()}

    def accuracy(net, X, labels):
        net.eval()
        with torch.no_grad():
            return (net(X).argmax(1) == labels).float().mean().item()

    def fit(net, optimizer, X, labels, epochs, Xv, yv, keep_eval=None):
        best, best_state = -1.0, None
        for _ in range(epochs):
            net.train()
            if keep_eval is not None:
                keep_eval.eval()
            order = torch.randperm(len(labels))
            for start in range(0, len(labels), BATCH):
                batch = order[start:start + BATCH]
                optimizer.zero_grad()
                nn.functional.cross_entropy(net(X[batch]), labels[batch]).backward()
                optimizer.step()
            val = accuracy(net, Xv, yv)
            if val > best:
                best, best_state = val, copy.deepcopy(net.state_dict())
        net.load_state_dict(best_state)

    results, seconds = {"head": [], "last8": []}, {"head": 0.0, "last8": 0.0}
    for seed in seeds:
        torch.manual_seed(seed)
        start = time.perf_counter()
        head = nn.Sequential(nn.Dropout(0.2), nn.Linear(F["train"].shape[1], num_classes))
        fit(head, torch.optim.Adam(head.parameters(), HEAD_LR), F["train"], y["train"], HEAD_EPOCHS, F["val"], y["val"])
        results["head"].append(accuracy(head, F["test"], y["test"]))
        seconds["head"] += time.perf_counter() - start
        start = time.perf_counter()
        blocks = copy.deepcopy(model.features[cut:])
        top = nn.Sequential(blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(), head)
        fit(top, torch.optim.Adam(top.parameters(), FINE_LR), A["train"], y["train"], FINE_EPOCHS, A["val"], y["val"],
            keep_eval=blocks)
        results["last8"].append(accuracy(top, A["test"], y["test"]))
        seconds["last8"] += time.perf_counter() - start
    if scratch_epochs:
        torch.manual_seed(seeds[0])
        start = time.perf_counter()
        scratch = torchvision.models.mobilenet_v2(weights=None, num_classes=num_classes)
        X = {s: d.X for s, d in splits.items()}
        fit(scratch, torch.optim.Adam(scratch.parameters(), SCRATCH_LR), X["train"], y["train"], scratch_epochs,
            X["val"], y["val"])
        results["scratch"] = [accuracy(scratch, X["test"], y["test"])]
        seconds["scratch"] = time.perf_counter() - start
    return results, seconds


# ---------------------------------------------------------------------------------------------- Keras
def run_keras(task, per_class, seeds, scratch_epochs):
    import numpy as np
    import tensorflow as tf
    from tensorflow import keras

    from course import data, keras_tools
    from course.keras_tools import as_dataset, restart_optimizer

    arrays = {s: keras_tools.load_arrays(task, s, n) for s, n in
              (("train", per_class), ("val", VAL_PER_CLASS), ("test", TEST_PER_CLASS))}
    num_classes = len(data.TASKS[task])
    base = keras_tools.mobilenet_v2_base(verbose=False)
    base.trainable = False
    model = keras.Model(base.input, keras.layers.Dense(num_classes, activation="softmax")(base.output))
    cut = base.get_layer("block_9_add").output
    front, top, head = keras.Model(base.input, cut), keras.Model(cut, model.output), keras.Model(base.output, model.output)
    A = {s: front(X, training=False).numpy() for s, (X, _) in arrays.items()}
    features = keras.Model(cut, base.output)
    F = {s: features(a, training=False).numpy() for s, a in A.items()}
    y = {s: labels for s, (_, labels) in arrays.items()}
    fine_tune_at = base.layers.index(base.get_layer("block_10_expand"))
    for layer in base.layers[fine_tune_at:]:
        if not isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = True
    for net, rate in ((head, HEAD_LR), (top, FINE_LR)):
        net.compile(optimizer=keras.optimizers.Adam(rate), loss="categorical_crossentropy", metrics=["accuracy"])
    base_start = base.get_weights()

    def accuracy(net, X, labels):
        return float(np.mean(net(X, training=False).numpy().argmax(1) == labels.argmax(1)))

    def fit(net, X, labels, epochs, Xv, yv, rate):
        restart_optimizer(net, rate)
        best = keras.callbacks.EarlyStopping("val_accuracy", patience=epochs, restore_best_weights=True)
        net.fit(as_dataset(X, labels, BATCH), validation_data=as_dataset(Xv, yv, 100, shuffle=False), epochs=epochs,
                callbacks=[best], verbose=0)

    results, seconds = {"head": [], "last8": []}, {"head": 0.0, "last8": 0.0}
    for seed in seeds:
        keras.utils.set_random_seed(seed)
        base.set_weights(base_start)
        for weight in head.trainable_weights:
            weight.assign(keras.initializers.GlorotUniform(seed)(weight.shape) if len(weight.shape) == 2
                          else tf.zeros(weight.shape))
        start = time.perf_counter()
        fit(head, F["train"], y["train"], HEAD_EPOCHS, F["val"], y["val"], HEAD_LR)
        results["head"].append(accuracy(head, F["test"], y["test"]))
        seconds["head"] += time.perf_counter() - start
        start = time.perf_counter()
        fit(top, A["train"], y["train"], FINE_EPOCHS, A["val"], y["val"], FINE_LR)
        results["last8"].append(accuracy(top, A["test"], y["test"]))
        seconds["last8"] += time.perf_counter() - start
    if scratch_epochs:
        keras.utils.set_random_seed(seeds[0])
        start = time.perf_counter()
        scratch_base = keras.applications.MobileNetV2(weights=None, include_top=False, pooling="avg",
                                                      input_shape=keras_tools.IMAGE_SHAPE)
        for layer in scratch_base.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = 0.9
        scratch = keras.Model(scratch_base.input,
                              keras.layers.Dense(num_classes, activation="softmax")(scratch_base.output))
        scratch.compile(optimizer=keras.optimizers.Adam(SCRATCH_LR), loss="categorical_crossentropy",
                        metrics=["accuracy"])
        X = {s: a for s, (a, _) in arrays.items()}
        fit(scratch, X["train"], y["train"], scratch_epochs, X["val"], y["val"], SCRATCH_LR)
        results["scratch"] = [accuracy(scratch, X["test"], y["test"])]
        seconds["scratch"] = time.perf_counter() - start
    return results, seconds


LABELS = {"head": "pre-trained, frozen + new head (feature extraction)",
          "last8": "  ... then the last 8 blocks fine-tuned",
          "scratch": "same network from scratch"}


def one_framework(framework, seeds, scratch_epochs):
    from course import weights

    run = run_torch if framework == "torch" else run_keras
    print(f"{framework}: {weights.choose(framework)}", flush=True)
    for name, (task, per_class) in TASKS.items():
        results, seconds = run(task, per_class, seeds, scratch_epochs)
        for key, accuracies in results.items():
            label = LABELS[key] + (f", {scratch_epochs} epochs" if key == "scratch" else "")
            print(f"{framework:<6} {name:<6} {per_class:>3} {label:<58} {spread(accuracies):<34} {seconds[key]:6.0f}",
                  flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("framework", nargs="?", choices=["torch", "keras"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--scratch-epochs", type=int, default=30, help="0 skips the from-scratch runs")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if args.framework:
        return one_framework(args.framework, args.seeds, args.scratch_epochs)
    load = os.getloadavg()[0]
    print(f"test accuracy (best validation epoch), {VAL_PER_CLASS} validation and {TEST_PER_CLASS} test images per class;"
          f" {os.cpu_count()} cores, load average {load:.1f} at the start", flush=True)
    print(f"{'frame.':<6} {'task':<6} {'n':>3} {'method':<58} {'test accuracy':<34} {'seconds':>6}", flush=True)
    for framework in ("torch", "keras"):  # separate processes: TensorFlow and torchvision must not share one
        subprocess.run([sys.executable, "-m", "benchmarks.transfer", framework, "--seeds", *map(str, args.seeds),
                        "--scratch-epochs", str(args.scratch_epochs)], check=True)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
