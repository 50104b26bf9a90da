"""Fine-Tuning Lab helper package.

Framework-free at import time: ``course.data`` and ``course.weights`` use NumPy and Pillow only;
``course.keras_tools`` imports TensorFlow and ``course.torch_tools`` imports PyTorch. Import at most
one of those two per process, or torch first (``import tensorflow`` then ``import torchvision``
crashes on some machines).
"""
import os

__all__ = ["quick_mode", "epochs", "memory_to_spare", "enough_memory"]


def quick_mode() -> bool:
    """True while nbgrader validates or grades a notebook, or when FTLAB_QUICK=1: train for a few steps."""
    return bool(os.environ.get("NBGRADER_EXECUTION")) or os.environ.get("FTLAB_QUICK") == "1"


def epochs(n: int) -> int:
    """``n`` epochs normally, one epoch in quick mode."""
    return 1 if quick_mode() else n


def memory_to_spare() -> int | None:
    """Bytes this kernel may still take before its container's memory limit, or None where there is no limit.

    The limit is FTLAB_MEMORY_LIMIT (bytes, or "2G") if set, counted against this process alone; else the
    container's cgroup (Binder, a hub), counted against all of its processes, page cache that can be dropped
    left out."""
    limit = os.environ.get("FTLAB_MEMORY_LIMIT")
    if limit:
        scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(limit[-1].upper(), 1)
        return int(float(limit.rstrip("KkMmGg")) * scale) - _resident_bytes()
    root = os.environ.get("FTLAB_CGROUP_ROOT", "/sys/fs/cgroup")
    for folder, limit_file, usage_file in ((root, "memory.max", "memory.current"),  # cgroup v2, then v1
                                           (f"{root}/memory", "memory.limit_in_bytes", "memory.usage_in_bytes")):
        try:
            limit = _read(f"{folder}/{limit_file}")
            used = int(_read(f"{folder}/{usage_file}"))
        except (OSError, ValueError):
            continue
        if limit == "max" or int(limit) >= 2**60:  # no limit ("max" in v2, a huge number in v1)
            return None
        stat = dict(line.split() for line in _read(f"{folder}/memory.stat").splitlines() if line.count(" ") == 1)
        return int(limit) - used + int(stat.get("total_inactive_file", stat.get("inactive_file", 0)))
    return None


def enough_memory(gib: float, what: str) -> bool:
    """True if ``what`` (needing about ``gib`` GiB more) fits under the memory limit; else says so and False."""
    spare = memory_to_spare()
    if spare is None or spare >= gib * 2**30:
        return True
    print(f"skipped: {what} needs about {gib:g} GiB more memory and this kernel has {spare / 2**30:.1f} GiB left"
          " under its limit (Binder gives about 2 GB in all). The README gives the figures of a full run.")
    return False


def _read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def _resident_bytes() -> int:
    for line in _read("/proc/self/status").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0
