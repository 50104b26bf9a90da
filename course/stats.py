"""Small statistics for honest figures (NumPy only): the spread over seeds, the uncertainty of a test accuracy."""
from __future__ import annotations

import math

import numpy as np


def spread(values) -> str:
    """Accuracies of one method over several seeds as "mean ± std (n seeds, min-max)", in percent."""
    values = np.asarray(values, dtype=float) * 100
    if len(values) == 1:
        return f"{values[0]:.1f}% (1 seed)"
    return (f"{values.mean():.1f} ± {values.std(ddof=1):.1f}% "
            f"({len(values)} seeds, {values.min():.1f}-{values.max():.1f})")


def accuracy_interval(correct: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """95% interval (Wilson score) for an accuracy measured as ``correct`` out of ``total`` test images.

    The test images are a sample: another sample of the same size would give another accuracy. The
    interval is the range of true accuracies that would make this measurement unsurprising.
    """
    if total <= 0:
        return 0.0, 1.0
    p = correct / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return max(0.0, centre - half), min(1.0, centre + half)
