"""Wall time of a lesson notebook executed headless, as a student's "Run all" would, in normal and quick mode.

Used by ``benchmarks/keras_lesson.py`` and ``benchmarks/pytorch_lesson.py``. Each run executes the instructor
notebook with nbclient in a fresh kernel; quick mode sets FTLAB_QUICK=1, which is what grading does through
NBGRADER_EXECUTION. It prints the wall seconds (kernel start included), the kernel's CPU seconds, the load average
before and after (wall time depends on what else runs on the machine: rerun when it was loaded), the slowest
cells, and the lines where the notebook reports its weights and accuracies; it fails if any cell raised.
"""
from __future__ import annotations

import argparse
import os
import resource
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

REPORTED = ("Weights:", "accuracy", "moving_mean", "changed by", "quick mode", "seed", "chosen", "layers (", "gradual")


def _cell_seconds(cell) -> float:
    from datetime import datetime

    timing = cell.get("metadata", {}).get("execution", {})
    try:
        start = datetime.fromisoformat(timing["iopub.execute_input"].replace("Z", "+00:00"))
        end = datetime.fromisoformat(timing["shell.execute_reply"].replace("Z", "+00:00"))
    except (KeyError, ValueError):
        return 0.0
    return (end - start).total_seconds()


def run(name: str, notebook: Path, mode: str, save: Path | None = None) -> float:
    """Execute ``notebook`` once in ``mode`` ("normal" or "quick"); print what it measured; return wall seconds."""
    nb = nbformat.read(notebook, as_version=4)
    saved = {key: os.environ.get(key) for key in ("FTLAB_QUICK", "NBGRADER_EXECUTION")}
    os.environ.pop("NBGRADER_EXECUTION", None)
    os.environ["FTLAB_QUICK"] = "1" if mode == "quick" else "0"
    load_before = os.getloadavg()[0]
    try:
        start = time.perf_counter()
        cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        NotebookClient(nb, timeout=1800, kernel_name="python3", record_timing=True,
                       resources={"metadata": {"path": str(notebook.parent)}}).execute()
        seconds = time.perf_counter() - start
        cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the kernel, once it has exited
        cpu = (cpu_after.ru_utime + cpu_after.ru_stime) - (cpu_before.ru_utime + cpu_before.ru_stime)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream" and out.get("name") == "stdout":
                for line in out["text"].splitlines():
                    if any(k in line for k in REPORTED):
                        print(f"  [{mode}] {line.strip()}")
    slowest = sorted(((_cell_seconds(c), i) for i, c in enumerate(nb.cells) if c.cell_type == "code"), reverse=True)[:5]
    print(f"  [{mode}] slowest cells: " + ", ".join(f"#{i} {s:.1f} s" for s, i in slowest))
    if save:
        save.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, save / f"{notebook.stem}.{mode}.ipynb")
    print(f"{name} lesson, {mode} mode: {seconds:.1f} s wall, {cpu:.1f} s kernel CPU, {os.cpu_count()} cores, load average"
          f" {load_before:.1f} before, {os.getloadavg()[0]:.1f} after (FTLAB_WEIGHTS={os.environ.get('FTLAB_WEIGHTS', 'auto')})",
          flush=True)
    return seconds


def main(name: str, notebook: Path, doc: str, argv=None) -> int:
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("modes", nargs="*", help="normal and/or quick (default: both)")
    parser.add_argument("--save", type=Path, help="folder for the executed notebooks")
    args = parser.parse_args(argv)
    unknown = set(args.modes) - {"normal", "quick"}
    if unknown:
        parser.error(f"unknown mode(s) {sorted(unknown)}: use normal and/or quick")
    for mode in args.modes or ["normal", "quick"]:
        run(name, notebook, mode, args.save)
    return 0
