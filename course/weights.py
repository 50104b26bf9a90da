"""Which pre-trained weights the lessons load: one setting, no silent fallback to random weights.

Set ``FTLAB_WEIGHTS`` to one of:

* ``auto`` (default) - ImageNet weights when the framework already has them in its cache or can
  download them now; otherwise the course backbone that ships in ``course/backbones/``;
* ``imagenet``       - ImageNet weights, downloaded if needed (an error if that fails);
* ``course``         - the course backbone: MobileNetV2 pre-trained on the course's 10 source shapes;
* ``none``           - random weights, on purpose (for the "from scratch" comparisons).

This module imports neither TensorFlow nor PyTorch.
"""
from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

SETTING = "FTLAB_WEIGHTS"
CHOICES = ("auto", "imagenet", "course", "none")
BACKBONE_DIR = Path(__file__).resolve().parent / "backbones"
COURSE_FILES = {
    "keras": BACKBONE_DIR / "mobilenet_v2_shapes_keras.weights.h5",
    "torch": BACKBONE_DIR / "mobilenet_v2_shapes_torch.pt",
}
RECORD_FILE = BACKBONE_DIR / "backbones.json"
# Where each framework caches the ImageNet file it downloads (its own standard cache).
IMAGENET_FILES = {
    "keras": "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_96_no_top.h5",
    "torch": "mobilenet_v2-7ebf99e0.pth",  # torchvision MobileNet_V2_Weights.IMAGENET1K_V2
}
IMAGENET_HOSTS = {"keras": "storage.googleapis.com", "torch": "download.pytorch.org"}


@dataclass(frozen=True)
class WeightsChoice:
    kind: str          # "imagenet", "course" or "none"
    path: Path | None  # the file to load, when there is one
    why: str           # one line for the student: what is used and why

    def __str__(self):
        return f"Weights: {self.kind} - {self.why}"


def setting() -> str:
    value = os.environ.get(SETTING, "auto").strip().lower() or "auto"
    if value not in CHOICES:
        raise ValueError(f"{SETTING}={value!r} is not a known choice; use one of {', '.join(CHOICES)}")
    return value


def imagenet_cache_file(framework: str) -> Path:
    if framework == "keras":
        home = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))
        return home / "models" / IMAGENET_FILES["keras"]
    cache = os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache"))
    home = Path(os.environ.get("TORCH_HOME", Path(cache) / "torch")).expanduser()
    return home / "hub" / "checkpoints" / IMAGENET_FILES["torch"]


@lru_cache(maxsize=None)
def can_download(framework: str, timeout: float = 3.0) -> bool:
    try:
        socket.create_connection((IMAGENET_HOSTS[framework], 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def source_accuracy(framework: str):
    """The source-task accuracy recorded when the course backbone was trained, or None."""
    if not RECORD_FILE.exists():
        return None
    return json.loads(RECORD_FILE.read_text()).get(framework, {}).get("source_val_accuracy")


def _course(framework: str, reason: str) -> WeightsChoice:
    path = COURSE_FILES[framework]
    if not path.exists():
        raise FileNotFoundError(
            f"the course backbone {path} is missing; rebuild it with `python -m course.pretrain {framework}`"
            f" or set {SETTING}=imagenet on a machine with internet")
    acc = source_accuracy(framework)
    acc = f", {acc:.1%} on held-out source images" if acc is not None else ""
    return WeightsChoice("course", path, f"course backbone (MobileNetV2 pre-trained on 10 shape classes{acc}); {reason}")


def choose(framework: str) -> WeightsChoice:
    """Decide which weights ``framework`` ("keras" or "torch") loads under the current setting."""
    if framework not in COURSE_FILES:
        raise ValueError(f"framework must be 'keras' or 'torch', not {framework!r}")
    value = setting()
    cached = imagenet_cache_file(framework)
    if value == "none":
        return WeightsChoice("none", None, f"random initialisation, because {SETTING}=none")
    if value == "course":
        return _course(framework, f"chosen by {SETTING}=course")
    if value == "imagenet":
        if cached.exists():
            return WeightsChoice("imagenet", cached, "ImageNet weights from the local cache")
        if not can_download(framework):
            raise RuntimeError(
                f"{SETTING}=imagenet, but {cached} is not cached and {IMAGENET_HOSTS[framework]} cannot be reached; "
                f"run `make fetch-imagenet` on a machine with internet, or set {SETTING}=course")
        return WeightsChoice("imagenet", cached, "ImageNet weights, downloading")
    if cached.exists():
        return WeightsChoice("imagenet", cached, "ImageNet weights found in the local cache")
    if can_download(framework):
        return WeightsChoice("imagenet", cached, "ImageNet weights, downloading (internet is reachable)")
    return _course(framework, "ImageNet weights are not cached and cannot be downloaded here")
