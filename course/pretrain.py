"""Build the course backbones: MobileNetV2 pre-trained on the 10 source shape classes.

    python -m course.pretrain torch     # writes course/backbones/mobilenet_v2_shapes_torch.pt
    python -m course.pretrain keras     # writes course/backbones/mobilenet_v2_shapes_keras.weights.h5
    python -m course.pretrain all       # both, each in its own process (TensorFlow and torchvision
                                        # must not share one)

Seeded; weights are stored as float16 to keep the committed files small, and the accuracy recorded
in backbones.json is measured on held-out source images *after* that rounding.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import numpy as np

from course import data, weights

EVAL_PER_CLASS = 50  # held-out source images per class for the recorded accuracy
KERAS_HEAD_FILE = weights.BACKBONE_DIR / "mobilenet_v2_shapes_keras_head.npz"  # the source head, for that check


def _record(framework, **values):
    record = json.loads(weights.RECORD_FILE.read_text()) if weights.RECORD_FILE.exists() else {}
    record[framework] = values
    weights.RECORD_FILE.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")


def pretrain_torch(per_class, epochs, seed):
    import torch
    import torchvision
    from course import torch_tools

    torch.manual_seed(seed)
    train = torch_tools.ShapesDataset("source", "train", per_class, seed)
    model = torchvision.models.mobilenet_v2(weights=None, num_classes=len(data.SOURCE_CLASSES))
    loader = torch.utils.data.DataLoader(train, batch_size=64, shuffle=True,
                                         generator=torch.Generator().manual_seed(seed))
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=epochs * len(loader))
    start = time.time()
    for epoch in range(epochs):
        model.train()
        for X, y in loader:
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(X), y)
            loss.backward()
            optimizer.step()
            schedule.step()
        print(f"torch epoch {epoch + 1}/{epochs} loss {loss.item():.3f} {time.time() - start:.0f}s", flush=True)
    state = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    torch.save(state, weights.COURSE_FILES["torch"])
    accuracy = evaluate_torch(seed)
    _record("torch", source_val_accuracy=round(accuracy, 4), train_per_class=per_class, epochs=epochs,
            seed=seed, train_seconds=round(time.time() - start), eval_per_class=EVAL_PER_CLASS)
    print(f"torch backbone: {accuracy:.1%} on {EVAL_PER_CLASS * len(data.SOURCE_CLASSES)} held-out source images")


def evaluate_torch(seed=0):
    """Accuracy of the committed torch backbone (with its source head) on held-out source images."""
    import os
    import torch
    from course import torch_tools
    os.environ[weights.SETTING] = "course"
    model = torch_tools.mobilenet_v2_pretrained(verbose=False).eval()
    val = torch_tools.ShapesDataset("source", "val", EVAL_PER_CLASS, seed)
    with torch.no_grad():
        return (model(val.X).argmax(1) == val.y).float().mean().item()


def evaluate_keras(seed=0):
    """Accuracy of the committed Keras backbone (with its source head) on held-out source images."""
    from tensorflow import keras
    from course import keras_tools
    X_val, y_val = keras_tools.load_arrays("source", "val", EVAL_PER_CLASS, seed)
    base = keras.applications.MobileNetV2(weights=str(weights.COURSE_FILES["keras"]), include_top=False,
                                          pooling="avg", input_shape=keras_tools.IMAGE_SHAPE)
    head = np.load(KERAS_HEAD_FILE)
    logits = base.predict(X_val, verbose=0) @ head["arr_0"] + head["arr_1"]
    return float((logits.argmax(1) == y_val.argmax(1)).mean())


def _to_float16(path):
    """Rewrite a Keras weights file with float16, gzip-compressed datasets (Keras casts on load)."""
    import h5py
    tmp = path.with_suffix(".tmp.h5")
    with h5py.File(path, "r") as src, h5py.File(tmp, "w") as dst:
        def copy(name, obj):
            if isinstance(obj, h5py.Group):
                dst.require_group(name).attrs.update(obj.attrs)
            else:
                value = obj[()]
                if value.dtype == np.float32:
                    value = value.astype(np.float16)
                kw = dict(compression="gzip", compression_opts=9) if value.ndim else {}
                dst.create_dataset(name, data=value, **kw).attrs.update(obj.attrs)
        dst.attrs.update(src.attrs)
        src.visititems(copy)
    tmp.replace(path)


def pretrain_keras(per_class, epochs, seed):
    import tensorflow as tf
    from tensorflow import keras
    from course import keras_tools

    keras.utils.set_random_seed(seed)
    X, y = keras_tools.load_arrays("source", "train", per_class, seed)
    base = keras.applications.MobileNetV2(weights=None, include_top=False, pooling="avg",
                                          input_shape=keras_tools.IMAGE_SHAPE)
    head = keras.layers.Dense(len(data.SOURCE_CLASSES), activation="softmax", name="source_head")
    model = keras.Model(base.input, head(base.output))
    steps = epochs * int(np.ceil(len(X) / 64))
    lr = keras.optimizers.schedules.CosineDecay(0.0, steps, warmup_target=2e-3, warmup_steps=steps // 10)
    model.compile(optimizer=keras.optimizers.AdamW(lr, weight_decay=1e-4),
                  loss="categorical_crossentropy", metrics=["accuracy"])
    start = time.time()
    model.fit(X, y, batch_size=64, epochs=epochs, verbose=2)
    path = weights.COURSE_FILES["keras"]
    base.save_weights(path)
    _to_float16(path)
    np.savez(KERAS_HEAD_FILE, *head.get_weights())
    accuracy = evaluate_keras(seed)
    _record("keras", source_val_accuracy=round(accuracy, 4), train_per_class=per_class, epochs=epochs,
            seed=seed, train_seconds=round(time.time() - start), eval_per_class=EVAL_PER_CLASS)
    print(f"keras backbone: {accuracy:.1%} on {EVAL_PER_CLASS * len(data.SOURCE_CLASSES)} held-out source images")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("framework", choices=["torch", "keras", "all"])
    parser.add_argument("--per-class", type=int, default=400, help="source training images per class")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    weights.BACKBONE_DIR.mkdir(exist_ok=True)
    if args.framework == "all":
        for framework in ("torch", "keras"):
            cmd = [sys.executable, "-m", "course.pretrain", framework, "--per-class", str(args.per_class),
                   "--epochs", str(args.epochs), "--seed", str(args.seed)]
            subprocess.run(cmd, check=True)
        return
    (pretrain_torch if args.framework == "torch" else pretrain_keras)(args.per_class, args.epochs, args.seed)


if __name__ == "__main__":
    main()
