"""Runtime of the PyTorch lesson: executes the instructor notebook headless, in normal and in quick mode.

    python -m benchmarks.pytorch_lesson            # both modes
    python -m benchmarks.pytorch_lesson quick      # one mode only

Prints the wall-clock seconds of each run (kernel start included) and the lines where the lesson reports
its accuracies and the weights it used. Weights follow FTLAB_WEIGHTS (offline, auto means the course
backbone). Nothing is written to the repository.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "source" / "pytorch_lesson" / "fine_tuning_pytorch.ipynb"
REPORTED = ("Weights:", "device:", "test accuracy")


def run(mode: str) -> float:
    """Execute the lesson once in ``mode`` ("normal" or "quick"); print its wall seconds and reported lines."""
    os.environ.pop("NBGRADER_EXECUTION", None)
    os.environ["FTLAB_QUICK"] = "1" if mode == "quick" else "0"
    nb = nbformat.read(NOTEBOOK, as_version=4)
    start = time.perf_counter()
    NotebookClient(nb, timeout=1800, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    seconds = time.perf_counter() - start
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream" and output.get("name") == "stdout":
                for line in output["text"].splitlines():
                    if line.startswith(REPORTED):
                        print(f"  [{mode}] {line}")
    print(f"pytorch lesson, {mode} mode: {seconds:.1f} s wall (kernel start included)", flush=True)
    return seconds


def main(argv=None) -> int:
    modes = (argv if argv is not None else sys.argv[1:]) or ["normal", "quick"]
    for mode in modes:
        if mode not in ("normal", "quick"):
            print(f"unknown mode {mode!r}: use normal and/or quick", file=sys.stderr)
            return 2
        run(mode)
    return 0


if __name__ == "__main__":
    sys.exit(main())
