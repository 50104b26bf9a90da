"""Build the course backbones: MobileNetV2 pre-trained on the 10 source shape classes.

    python -m course.pretrain torch     # trains course/backbones/mobilenet_v2_shapes_torch.pt
    python -m course.pretrain keras     # converts it to course/backbones/mobilenet_v2_shapes_keras.weights.h5
    python -m course.pretrain all       # both, each in its own process (torch is imported before
                                        # TensorFlow in the Keras step, the order that is safe)

The two frameworks' MobileNetV2 have the same layers, so one training run serves both: the Keras
backbone is the torch one converted layer by layer (see torch_to_keras). Seeded; weights are stored as float16 to keep the committed files small, and the accuracy recorded
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


def padding_switch(model):
    """Let ``model`` (torchvision MobileNetV2) pad its stride-2 convolutions either way.

    torchvision pads 1 pixel on every side; Keras pads 0 on the top/left and 1 on the bottom/right,
    which shifts each stride-2 sampling grid by a pixel. Training on both makes one set of weights
    work in both frameworks. Returns ``set_mode("torch" | "keras")``; the state dict is unchanged.
    """
    import torch
    convs = [m for m in model.features.modules() if isinstance(m, torch.nn.Conv2d) and m.stride == (2, 2)]
    mode = {"pad": (1, 1, 1, 1)}

    def pad_input(conv, args):
        return (torch.nn.functional.pad(args[0], mode["pad"]),)

    for conv in convs:
        conv.padding = (0, 0)
        conv.register_forward_pre_hook(pad_input)

    def set_mode(name):
        mode["pad"] = (1, 1, 1, 1) if name == "torch" else (0, 1, 0, 1)
    return set_mode


def pretrain_torch(per_class, epochs, seed):
    import torch
    import torchvision
    from course import torch_tools

    torch.manual_seed(seed)
    train = torch_tools.ShapesDataset("source", "train", per_class, seed)
    model = torchvision.models.mobilenet_v2(weights=None, num_classes=len(data.SOURCE_CLASSES))
    set_padding = padding_switch(model)
    loader = torch.utils.data.DataLoader(train, batch_size=64, shuffle=True,
                                         generator=torch.Generator().manual_seed(seed))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=epochs * len(loader))
    start = time.time()
    for epoch in range(epochs):
        model.train()
        for step, (X, y) in enumerate(loader):
            set_padding("torch" if step % 2 == 0 else "keras")  # alternate the two conventions
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


def torch_to_keras(state, base):
    """Copy a torchvision MobileNetV2 state dict into a Keras MobileNetV2 base, layer by layer.

    The two implementations have the same convolution and BatchNorm layers in the same order. Kernels
    are transposed to Keras' layout; torchvision's input normalisation (ImageNet mean/std) is folded
    into the first convolution and its BatchNorm, so the Keras model takes Keras' own
    ``preprocess_input`` (pixels scaled to [-1, 1]); BatchNorm epsilon (1e-5 vs 1e-3) is compensated.
    """
    from tensorflow import keras
    from course import torch_tools

    def tensor(key):
        return state[key].float().numpy()

    prefixes = list(dict.fromkeys(k.rsplit(".", 1)[0] for k in state if k.startswith("features.") and k.endswith("weight")))
    layers = [l for l in base.layers if isinstance(l, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D,
                                                        keras.layers.BatchNormalization))]
    assert len(prefixes) == len(layers), (len(prefixes), len(layers))
    mean, std = torch_tools.MEAN.flatten().numpy(), torch_tools.STD.flatten().numpy()
    shift = None  # the first conv's response to the constant part of the folded normalisation
    for i, (prefix, layer) in enumerate(zip(prefixes, layers)):
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta = tensor(prefix + ".weight"), tensor(prefix + ".bias")
            moving_mean, moving_var = tensor(prefix + ".running_mean"), tensor(prefix + ".running_var")
            if shift is not None:
                moving_mean, shift = moving_mean - shift, None
            moving_var = np.maximum(moving_var + 1e-5 - layer.epsilon, 0.0)
            layer.set_weights([gamma, beta, moving_mean, moving_var])
            continue
        kernel = tensor(prefix + ".weight")
        if i == 0:  # torch sees (x/255 - mean)/std; Keras gives k = x/127.5 - 1, so x/255 = (k + 1)/2
            scale, offset = 1 / (2 * std), (0.5 - mean) / std
            shift = (kernel * offset[None, :, None, None]).sum(axis=(1, 2, 3))
            kernel = kernel * scale[None, :, None, None]
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            layer.set_weights([kernel.transpose(2, 3, 0, 1)])   # (C, 1, kh, kw) -> (kh, kw, C, 1)
        else:
            layer.set_weights([kernel.transpose(2, 3, 1, 0)])   # (out, in, kh, kw) -> (kh, kw, in, out)


def convert_keras(seed):
    """The Keras course backbone: the torch backbone converted (see torch_to_keras)."""
    import torch
    from course import torch_tools  # noqa: F401  (torchvision before TensorFlow: the safe order)
    from tensorflow import keras
    from course import keras_tools

    start = time.time()
    state = torch.load(weights.COURSE_FILES["torch"], map_location="cpu", weights_only=True)
    base = keras.applications.MobileNetV2(weights=None, include_top=False, pooling="avg",
                                          input_shape=keras_tools.IMAGE_SHAPE)
    torch_to_keras(state, base)
    path = weights.COURSE_FILES["keras"]
    base.save_weights(path)
    _to_float16(path)
    kernel, bias = state["classifier.1.weight"].float().numpy().T, state["classifier.1.bias"].float().numpy()
    np.savez(KERAS_HEAD_FILE, kernel, bias)
    accuracy = evaluate_keras(seed)
    _record("keras", source_val_accuracy=round(accuracy, 4), converted_from="torch", seed=seed,
            convert_seconds=round(time.time() - start), eval_per_class=EVAL_PER_CLASS)
    print(f"keras backbone: {accuracy:.1%} on {EVAL_PER_CLASS * len(data.SOURCE_CLASSES)} held-out source images")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("framework", choices=["torch", "keras", "all"])
    parser.add_argument("--per-class", type=int, default=400, help="source training images per class")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    weights.BACKBONE_DIR.mkdir(exist_ok=True)
    if args.framework == "all":
        for framework in ("torch", "keras"):
            cmd = [sys.executable, "-m", "course.pretrain", framework, "--per-class", str(args.per_class),
                   "--epochs", str(args.epochs), "--seed", str(args.seed)]
            subprocess.run(cmd, check=True)
        return
    if args.framework == "torch":
        pretrain_torch(args.per_class, args.epochs, args.seed)
    else:
        convert_keras(args.seed)


if __name__ == "__main__":
    main()
