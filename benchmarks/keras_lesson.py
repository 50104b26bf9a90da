"""Wall time of the Keras lesson executed headless, in normal mode ("Run all") and in quick (grading) mode.

    .venv/bin/python benchmarks/keras_lesson.py            # both modes
    .venv/bin/python benchmarks/keras_lesson.py normal     # one mode
    .venv/bin/python benchmarks/keras_lesson.py --save DIR # also keep the executed notebooks in DIR

Runs source/keras_lesson/fine_tuning_keras.ipynb in a fresh kernel (see benchmarks/lesson_runtime.py for what it
prints). Weights follow FTLAB_WEIGHTS (offline, auto means the course backbone).
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lesson_runtime import main  # noqa: E402

NOTEBOOK = Path(__file__).resolve().parents[1] / "source" / "keras_lesson" / "fine_tuning_keras.ipynb"

if __name__ == "__main__":
    sys.exit(main("keras", NOTEBOOK, __doc__))
