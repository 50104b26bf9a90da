"""Wall time of the Keras lesson executed headless, in normal mode and in quick (grading) mode.

    .venv/bin/python benchmarks/keras_lesson.py            # both modes
    .venv/bin/python benchmarks/keras_lesson.py normal     # one mode
    .venv/bin/python benchmarks/keras_lesson.py --save DIR # also keep the executed notebooks in DIR

Runs the instructor notebook (source/keras_lesson/fine_tuning_keras.ipynb) with nbclient in a fresh
kernel, as a student's "Run all" would; quick mode sets FTLAB_QUICK=1, which is what grading does
through NBGRADER_EXECUTION. Prints the wall seconds of each run, the lines the notebook printed that
carry its measured accuracies, and fails if any cell raised. Wall time depends on what else runs on the
machine: the kernel's CPU seconds and the load average are printed with it.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "source" / "keras_lesson" / "fine_tuning_keras.ipynb"
KEYWORDS = ("accuracy", "Weights:", "moving_mean", "changed by", "quick mode")


def run(mode: str, save: Path | None = None) -> float:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    previous = os.environ.get("FTLAB_QUICK")
    os.environ["FTLAB_QUICK"] = "1" if mode == "quick" else "0"
    try:
        start = time.perf_counter()
        cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
        seconds = time.perf_counter() - start
        cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the kernel, once it has exited
        cpu = (cpu_after.ru_utime + cpu_after.ru_stime) - (cpu_before.ru_utime + cpu_before.ru_stime)
    finally:
        if previous is None:
            os.environ.pop("FTLAB_QUICK", None)
        else:
            os.environ["FTLAB_QUICK"] = previous
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream" and out.get("name") == "stdout":
                for line in out["text"].splitlines():
                    if any(k in line for k in KEYWORDS):
                        print(f"  [{mode}] {line}")
    if save:
        save.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, save / f"fine_tuning_keras.{mode}.ipynb")
    load = os.getloadavg()[0]
    print(f"keras lesson, {mode} mode: {seconds:.1f} s wall, {cpu:.1f} s kernel CPU, {os.cpu_count()} cores, "
          f"load average {load:.1f} (FTLAB_WEIGHTS={os.environ.get('FTLAB_WEIGHTS', 'auto')})", flush=True)
    return seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("modes", nargs="*", help="normal and/or quick (default: both)")
    parser.add_argument("--save", type=Path, help="folder for the executed notebooks")
    args = parser.parse_args(argv)
    unknown = set(args.modes) - {"normal", "quick"}
    if unknown:
        parser.error(f"unknown mode(s) {sorted(unknown)}: use normal and/or quick")
    for mode in args.modes or ["normal", "quick"]:
        run(mode, args.save)
    return 0


if __name__ == "__main__":
    sys.exit(main())
