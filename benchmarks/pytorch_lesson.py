"""Wall time of the PyTorch lesson executed headless, in normal mode ("Run all") and in quick (grading) mode.

    .venv/bin/python benchmarks/pytorch_lesson.py            # both modes
    .venv/bin/python benchmarks/pytorch_lesson.py quick      # one mode
    .venv/bin/python benchmarks/pytorch_lesson.py --save DIR # also keep the executed notebooks in DIR

Runs source/pytorch_lesson/fine_tuning_pytorch.ipynb in a fresh kernel (see benchmarks/lesson_runtime.py for what
it prints). Weights follow FTLAB_WEIGHTS (offline, auto means the course backbone).
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lesson_runtime import main  # noqa: E402

NOTEBOOK = Path(__file__).resolve().parents[1] / "source" / "pytorch_lesson" / "fine_tuning_pytorch.ipynb"

if __name__ == "__main__":
    sys.exit(main("pytorch", NOTEBOOK, __doc__))
