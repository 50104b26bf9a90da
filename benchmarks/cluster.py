"""Scaling on dask: seconds per submission with 1 and 2 local workers (issue 15).

    python -m benchmarks.cluster                                  # quiz, 8 copies, 1 then 2 workers
    python -m benchmarks.cluster --assignment pytorch_lesson --copies 4 --workers 1,2,4

For each worker count: a fresh ``dask scheduler`` and that many ``dask worker --nthreads 1`` processes on
127.0.0.1, then ``python -m autograder grade ASSIGNMENT SUBS --out OUT --cluster tcp://127.0.0.1:PORT`` on N
copies of the assignment's reference solution (protected: sandbox + judge). Reported: the grading's own
seconds per submission (``run.json``'s ``seconds``: from the first task sent to the last row; the workers'
start, their plugin set-up and the client's template build are printed apart) and the speed-up over one
worker. On this project's 2-core machine two workers is the most that can help: more only share the cores.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.grading import BIN, ENV, reference_batch


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_cluster(workers: int, folder: Path) -> tuple[str, list[subprocess.Popen]]:
    from distributed import Client

    address = f"tcp://127.0.0.1:{free_port()}"
    env = {**ENV, "DASK_DISTRIBUTED__WORKER__DAEMON": "False"}
    procs = [subprocess.Popen([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port",
                               address.rsplit(":", 1)[1], "--no-dashboard"], stdout=subprocess.DEVNULL,
                              stderr=open(folder / "scheduler.log", "wb"), start_new_session=True, env=env)]
    for i in range(workers):
        procs.append(subprocess.Popen([str(BIN / "dask"), "worker", address, "--nthreads", "1", "--no-dashboard",
                                       "--death-timeout", "60"], stdout=subprocess.DEVNULL,
                                      stderr=open(folder / f"worker{i}.log", "wb"), start_new_session=True, env=env))
    with Client(address, timeout=60, set_as_default=False) as client:
        client.wait_for_workers(workers, timeout=300)
    return address, procs


def stop_cluster(procs: list[subprocess.Popen]) -> None:
    for proc in reversed(procs):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--assignment", default="quiz")
    parser.add_argument("--copies", type=int, default=8)
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.workers.split(",")]
    results = {}
    with tempfile.TemporaryDirectory(prefix="ftlab-bench-cluster-") as tmp:
        root = Path(tmp)
        _, _, _, submissions, pipeline_course = reference_batch(root, args.assignment, args.copies)
        print(f"grading {args.copies} copies of the {args.assignment} reference solution on dask, "
              f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}", flush=True)
        for workers in counts:
            folder = root / f"cluster-{workers}"
            folder.mkdir()
            started = time.perf_counter()
            address, procs = start_cluster(workers, folder)
            ready = time.perf_counter() - started
            try:
                out = folder / "out"
                started = time.perf_counter()
                done = subprocess.run([sys.executable, "-m", "autograder", "grade", args.assignment, str(submissions),
                                       "--out", str(out), "--course", str(pipeline_course), "--cluster", address],
                                      env=ENV, capture_output=True, text=True)
                wall = time.perf_counter() - started
            finally:
                stop_cluster(procs)
            if done.returncode != 0:
                raise SystemExit(f"grading failed:\n{done.stderr[-2000:]}")
            info = json.loads((out / "run.json").read_text())
            if info["failed"]:
                raise SystemExit(f"{info['failed']} submissions failed: see {out / 'grades.csv'}")
            results[workers] = info["seconds"] / args.copies
            spread = {}
            for worker in info["cluster"]["graded_by"].values():
                spread[worker] = spread.get(worker, 0) + 1
            print(f"  {workers} worker(s): {results[workers]:6.2f} s per submission ({info['seconds']:.0f} s grading,"
                  f" {wall:.0f} s for the whole command; workers ready in {ready:.0f} s; submissions per worker "
                  f"{sorted(spread.values())}; load average now {os.getloadavg()[0]:.1f})", flush=True)
            print(f"    mean seconds per step: {info['mean_step_seconds']}", flush=True)
        if len(results) > 1:
            base = results[counts[0]]
            for workers in counts[1:]:
                print(f"speed-up {workers} workers vs {counts[0]}: {base / results[workers]:.2f}x")
        with open(os.environ.get("FTLAB_BENCH_JSON", os.devnull), "w") as f:
            json.dump({"assignment": args.assignment, "copies": args.copies, "seconds_per_submission": results}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
