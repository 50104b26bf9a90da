"""Peak memory of each lesson's kernel: a full "Run all", and the quick run that Validate and grading do.

    .venv/bin/python -m benchmarks.memory                          # both lessons and the quiz, both modes
    .venv/bin/python -m benchmarks.memory pytorch_lesson --mode normal
    .venv/bin/python -m benchmarks.memory --json memory.json       # also write the figures as JSON
    .venv/bin/python -m benchmarks.memory keras_lesson --mode normal --cells   # which cells raise the peak
    .venv/bin/python -m benchmarks.memory keras_lesson --mode normal --after 34 "del scratch; import gc; gc.collect()"
    FTLAB_MEMORY_LIMIT=2G .venv/bin/python -m benchmarks.memory keras_lesson --mode normal   # as under Binder's 2 GB

With FTLAB_MEMORY_LIMIT set, the lessons' ``course.enough_memory`` counts the kernel's own resident memory
against that limit and skips the whole-network runs that would not fit, as it does under a container's limit.

`--after N CODE` (repeatable) runs CODE in an extra cell after cell N (0-based, as `--cells` numbers
them) of a copy of the notebook: what a change to a lesson would save, measured before anyone edits it.

Each run starts a fresh kernel (nbclient, as benchmarks/*_lesson.py do) and executes the instructor
notebook (source/<assignment>/) top to bottom, in its folder, with the environment's settings
(FTLAB_WEIGHTS as set, `course` in the test suite and on Binder). "normal" is a student's "Run all";
"quick" sets NBGRADER_EXECUTION=validate, as nbgrader's Validate button and the grader do.

Two figures per run (Linux only, read from /proc):
- kernel peak RSS: the kernel process's high-water mark of resident memory (VmHWM in
  /proc/<pid>/status), read after the last cell, before the kernel is shut down;
- tree peak RSS: the largest sum of resident memory over the kernel and its child processes (DataLoader
  workers and the like), sampled every 0.1 s, so a short spike between samples can be missed.

Binder gives a user about 2 GB for everything in the container: the Jupyter server, every open
notebook's kernel, and, while Validate runs, a second kernel in quick mode.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
ASSIGNMENTS = ("keras_lesson", "pytorch_lesson", "quiz")


def status_kb(pid: int, field: str) -> int:
    """A ``kB`` field of /proc/<pid>/status (VmRSS, VmHWM), 0 if the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def process_tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        for task in Path(f"/proc/{current}/task").glob("*") if Path(f"/proc/{current}/task").exists() else []:
            try:
                todo.extend(int(child) for child in (task / "children").read_text().split())
            except (FileNotFoundError, ProcessLookupError):
                pass
    return pids


class TreeSampler(threading.Thread):
    """Largest sum of VmRSS over ``pid`` and its descendants, sampled every ``interval`` seconds."""

    def __init__(self, pid: int, interval: float = 0.1):
        super().__init__(daemon=True)
        self.pid, self.interval, self.peak_kb = pid, interval, 0
        self._stop_event = threading.Event()

    def run(self):
        while not self._stop_event.is_set():
            self.peak_kb = max(self.peak_kb, sum(status_kb(p, "VmRSS") for p in process_tree(self.pid)))
            self._stop_event.wait(self.interval)

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        return self.peak_kb


def notebook_path(assignment: str) -> Path:
    (path,) = sorted((ROOT / "source" / assignment).glob("*.ipynb"))
    return path


def measure(assignment: str, mode: str, cells: bool = False, after: dict[int, list[str]] | None = None) -> dict:
    """Execute the assignment's notebook once in ``mode`` ("normal" or "quick"); returns the figures.
    ``after``: extra code cells to run after the cells with these indices."""
    path = notebook_path(assignment)
    nb = nbformat.read(path, as_version=4)
    labels = list(range(len(nb.cells)))  # what --cells prints: the cell's index in the notebook, or +N
    if after:
        extended, labels = [], []
        for index, cell in enumerate(nb.cells):
            extended.append(cell)
            labels.append(index)
            for code in after.get(index, []):
                extended.append(nbformat.v4.new_code_cell(code))
                labels.append(f"+{index}")
        nb.cells = extended
    saved = {name: os.environ.get(name) for name in ("NBGRADER_EXECUTION", "FTLAB_QUICK")}
    os.environ.pop("FTLAB_QUICK", None)
    if mode == "quick":
        os.environ["NBGRADER_EXECUTION"] = "validate"
    else:
        os.environ.pop("NBGRADER_EXECUTION", None)
    try:
        client = NotebookClient(nb, timeout=1800, kernel_name="python3",
                                resources={"metadata": {"path": str(path.parent)}})
        start = time.perf_counter()
        with client.setup_kernel():
            pid = client.km.provisioner.process.pid
            sampler = TreeSampler(pid)
            sampler.start()
            steps = []
            for index, cell in enumerate(nb.cells):
                client.execute_cell(cell, index)
                if cells and cell.cell_type == "code":
                    first_line = (cell.source.strip().splitlines() or [""])[0][:60]
                    steps.append({"cell": labels[index], "first_line": first_line,
                                  "rss_mib": round(status_kb(pid, "VmRSS") / 1024),
                                  "peak_mib": round(status_kb(pid, "VmHWM") / 1024)})
            kernel_peak_kb = status_kb(pid, "VmHWM")
            final_kb = status_kb(pid, "VmRSS")
            tree_peak_kb = sampler.stop()
        seconds = time.perf_counter() - start
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    result = {"assignment": assignment, "mode": mode, "kernel_peak_mib": round(kernel_peak_kb / 1024),
              "tree_peak_mib": round(max(tree_peak_kb, kernel_peak_kb) / 1024),
              "kernel_final_mib": round(final_kb / 1024), "seconds": round(seconds, 1)}
    if cells:
        result["cells"] = steps
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("assignments", nargs="*", help=f"any of {', '.join(ASSIGNMENTS)} (default: all)")
    parser.add_argument("--mode", choices=("normal", "quick", "both"), default="both")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--cells", action="store_true", help="also print the kernel's RSS after each code cell")
    parser.add_argument("--after", nargs=2, action="append", default=[], metavar=("N", "CODE"),
                        help="run CODE in an extra cell after cell N of a copy of the notebook (repeatable)")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.assignments) - set(ASSIGNMENTS))
    if unknown:
        parser.error(f"unknown assignment(s) {', '.join(unknown)}: use {', '.join(ASSIGNMENTS)}")
    if not Path("/proc/self/status").exists():
        print("benchmarks.memory reads /proc: Linux only", file=sys.stderr)
        return 2
    modes = ("normal", "quick") if args.mode == "both" else (args.mode,)
    after: dict[int, list[str]] = {}
    for index, code in args.after:
        after.setdefault(int(index), []).append(code)
    if after:
        print("extra cells: " + "; ".join(f"after cell {i}: {c!r}" for i, codes in sorted(after.items()) for c in codes))
    load = os.getloadavg()
    settings = " ".join(f"{k}={os.environ[k]}" for k in sorted(os.environ)
                        if k.endswith("_THREADS") or k.startswith(("MALLOC_", "TF_ENABLE")))
    print(f"FTLAB_WEIGHTS={os.environ.get('FTLAB_WEIGHTS', 'auto')} {settings}, {os.cpu_count()} CPUs, "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)
    print(f"{'assignment':<16}{'mode':<8}{'kernel peak RSS':>17}{'tree peak RSS':>15}{'RSS at end':>12}{'seconds':>9}")
    print("(MiB: 1024 x 1024 bytes)")
    results = []
    for assignment in args.assignments or ASSIGNMENTS:
        for mode in modes:
            r = measure(assignment, mode, cells=args.cells, after=after)
            results.append(r)
            print(f"{assignment:<16}{mode:<8}{r['kernel_peak_mib']:>13} MiB{r['tree_peak_mib']:>11} MiB"
                  f"{r['kernel_final_mib']:>8} MiB{r['seconds']:>9}", flush=True)
            previous = 0
            for step in r.get("cells", []):
                print(f"    cell {step['cell']:>3}: RSS {step['rss_mib']:>5} MiB, peak {step['peak_mib']:>5} MiB "
                      f"({step['peak_mib'] - previous:+5} MiB)  {step['first_line']}")
                previous = step["peak_mib"]
    if args.json:
        args.json.write_text(json.dumps({"load_average": load, "results": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
