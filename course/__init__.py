"""Fine-Tuning Lab helper package.

Framework-free at import time: ``course.data`` and ``course.weights`` use NumPy and Pillow only;
``course.keras_tools`` imports TensorFlow and ``course.torch_tools`` imports PyTorch. Import at most
one of those two per process, or torch first (``import tensorflow`` then ``import torchvision``
crashes on some machines).
"""
import os

__all__ = ["quick_mode", "epochs"]


def quick_mode() -> bool:
    """True while nbgrader validates or grades a notebook, or when FTLAB_QUICK=1: train for a few steps."""
    return bool(os.environ.get("NBGRADER_EXECUTION")) or os.environ.get("FTLAB_QUICK") == "1"


def epochs(n: int) -> int:
    """``n`` epochs normally, one epoch in quick mode."""
    return 1 if quick_mode() else n
