"""How much does pre-training help? Prints the course's transfer figures for both frameworks.

    python -m benchmarks.transfer            # both frameworks, each in its own process
    python -m benchmarks.transfer torch      # one framework

For each framework, on the target task (5 new shapes, --per-class training images per class, 40 test
images per class): test accuracy of (1) the pre-trained backbone frozen + a new head, (2) the same after
unfreezing the last layers and fine-tuning at a 100x smaller learning rate, (3) the same network from
random weights with the same data and the same number of epochs; and, on the dissimilar task (count the
dots), (1) and (3). Weights follow FTLAB_WEIGHTS (default auto: ImageNet if cached, else the course backbone).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time


HEAD_EPOCHS, FINE_EPOCHS, BATCH = 20, 10, 10
HEAD_LR, FINE_LR = 1e-3, 1e-5


def run_torch(task, per_class, pretrained, fine_tune):
    import torch
    from torch import nn
    import torchvision
    from course import torch_tools

    torch.manual_seed(0)
    train = torch_tools.ShapesDataset(task, "train", per_class)
    test = torch_tools.ShapesDataset(task, "test")
    model = torch_tools.mobilenet_v2_pretrained(verbose=False) if pretrained else torchvision.models.mobilenet_v2()
    model.classifier[-1] = nn.Linear(model.classifier[-1].in_features, len(train.classes))
    loader = torch.utils.data.DataLoader(train, batch_size=BATCH, shuffle=True, generator=torch.Generator().manual_seed(0))

    def fit(epochs, groups, backbone_eval):
        optimizer = torch.optim.Adam(groups)
        for _ in range(epochs):
            model.train()
            if backbone_eval:
                model.features.eval()  # frozen BatchNorm keeps its statistics
            for X, y in loader:
                optimizer.zero_grad()
                nn.functional.cross_entropy(model(X), y).backward()
                optimizer.step()

    def accuracy():
        model.eval()
        with torch.no_grad():
            return (model(test.X).argmax(1) == test.y).float().mean().item()

    if not pretrained:  # from scratch: everything trains, same data, same epochs
        fit(HEAD_EPOCHS + (FINE_EPOCHS if fine_tune else 0), [{"params": model.parameters(), "lr": HEAD_LR}], False)
        return {"scratch": accuracy()}
    model.requires_grad_(False)
    model.classifier[-1].requires_grad_(True)
    fit(HEAD_EPOCHS, [{"params": model.classifier.parameters(), "lr": HEAD_LR}], True)
    result = {"head": accuracy()}
    if fine_tune:
        for m in model.features[-3:].modules():  # last 3 blocks, BatchNorm stays frozen
            if not isinstance(m, nn.BatchNorm2d):
                for p in m.parameters(recurse=False):
                    p.requires_grad = True
        fit(FINE_EPOCHS, [{"params": [p for p in model.parameters() if p.requires_grad], "lr": FINE_LR}], True)
        result["fine_tuned"] = accuracy()
    return result


def run_keras(task, per_class, pretrained, fine_tune):
    from tensorflow import keras
    from course import data, keras_tools

    keras.utils.set_random_seed(0)
    X_train, y_train = keras_tools.load_arrays(task, "train", per_class)
    X_test, y_test = keras_tools.load_arrays(task, "test")
    base = keras.applications.MobileNetV2(weights=keras_tools.mobilenet_v2_weights(verbose=False) if pretrained else None,
                                          include_top=False, pooling="avg", input_shape=keras_tools.IMAGE_SHAPE)
    model = keras.Model(base.input, keras.layers.Dense(len(data.TASKS[task]), activation="softmax")(base.output))

    def fit(epochs, lr):
        model.compile(optimizer=keras.optimizers.Adam(lr), loss="categorical_crossentropy", metrics=["accuracy"])
        model.fit(X_train, y_train, epochs=epochs, batch_size=BATCH, verbose=0)

    def accuracy():
        return float((model.predict(X_test, verbose=0).argmax(1) == y_test.argmax(1)).mean())

    if not pretrained:
        fit(HEAD_EPOCHS + (FINE_EPOCHS if fine_tune else 0), HEAD_LR)
        return {"scratch": accuracy()}
    base.trainable = False
    fit(HEAD_EPOCHS, HEAD_LR)
    result = {"head": accuracy()}
    if fine_tune:
        base.trainable = True
        for layer in base.layers[:-20]:
            layer.trainable = False
        for layer in base.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False
        fit(FINE_EPOCHS, FINE_LR)
        result["fine_tuned"] = accuracy()
    return result


def one_framework(framework, per_class):
    run = run_torch if framework == "torch" else run_keras
    from course import weights
    print(f"{framework}: {weights.choose(framework)}")
    print(f"{'framework':<9} {'task':<11} {'method':<38} {'test acc':>8} {'seconds':>8}")
    rows = [("target", True, True, "pre-trained, frozen + new head", "head"),
            ("target", True, True, "  ... then last layers fine-tuned", "fine_tuned"),
            ("target", False, True, "same network from scratch", "scratch"),
            ("dissimilar", True, False, "pre-trained, frozen + new head", "head"),
            ("dissimilar", False, False, "same network from scratch", "scratch")]
    cache = {}
    for task, pretrained, fine_tune, label, key in rows:
        if (task, pretrained) not in cache:
            start = time.time()
            cache[task, pretrained] = (run(task, per_class, pretrained, fine_tune), time.time() - start)
        result, seconds = cache[task, pretrained]
        print(f"{framework:<9} {task:<11} {label:<38} {result[key]:>8.1%} {seconds:>8.0f}", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("framework", nargs="?", choices=["torch", "keras"])
    parser.add_argument("--per-class", type=int, default=10, help="training images per class")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if args.framework:
        return one_framework(args.framework, args.per_class)
    print(f"Target task: 5 new shapes, {args.per_class} training images per class, 200 test images; "
          f"head {HEAD_EPOCHS} epochs at lr {HEAD_LR}, fine-tuning {FINE_EPOCHS} epochs at lr {FINE_LR}.", flush=True)
    for framework in ("torch", "keras"):  # separate processes: TensorFlow and torchvision must not share one
        subprocess.run([sys.executable, "-m", "benchmarks.transfer", framework, "--per-class", str(args.per_class)],
                       check=True)


if __name__ == "__main__":
    main()
