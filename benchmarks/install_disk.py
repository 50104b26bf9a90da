"""Peak disk use while the course's environment installs: as `make env` does it, or as one pip call.

    python -m benchmarks.install_disk             # `make env` into a scratch environment
    python -m benchmarks.install_disk --one-call  # the same requirements.txt in a single pip call

It installs into a scratch folder next to `.venv` (the same disk), samples the disk's used bytes twice a second,
prints the highest rise above the start and the environment's final size, then removes the folder. The rise
counts everything written to that disk meanwhile, so run it on an otherwise quiet machine. Where pip takes
torch from a local mirror nothing is downloaded; CI's configuration downloads PyPI's CUDA build, so the README's
figures were taken with `PIP_EXTRA_INDEX_URL=file:///opt/pypi/simple` (no local torch) on this machine.
"""
import argparse
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRATCH = ".venv-install-disk"  # relative: the Makefile joins it to the repo's path


def used_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def install(one_call: bool) -> None:
    if one_call:
        subprocess.run([sys.executable, "-m", "venv", str(REPO / SCRATCH)], check=True)
        subprocess.run([str(REPO / SCRATCH / "bin" / "python"), "-m", "pip", "install", "-q",
                        "--disable-pip-version-check", "-r", "requirements.txt"], cwd=REPO, check=True)
    else:
        subprocess.run(["make", "-s", "env", f"VENV={SCRATCH}"], cwd=REPO, check=True, stdout=subprocess.DEVNULL)


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--one-call", action="store_true", help="one pip call, downloads in $TMPDIR, pip's cache on")
    one_call = parser.parse_args().one_call
    shutil.rmtree(REPO / SCRATCH, ignore_errors=True)
    start, peak, done = used_bytes(REPO), [0], threading.Event()

    def sample() -> None:
        while not done.wait(0.5):
            peak[0] = max(peak[0], used_bytes(REPO) - start)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    began = time.monotonic()
    try:
        install(one_call)
        seconds = time.monotonic() - began
    finally:
        done.set()
        sampler.join()
    size = folder_bytes(REPO / SCRATCH)
    shutil.rmtree(REPO / SCRATCH, ignore_errors=True)
    how = "one pip call" if one_call else "make env"
    print(f"{how}: peak disk rise {peak[0] / 1e9:.2f} GB, environment {size / 1e9:.2f} GB, {seconds:.0f} s")


if __name__ == "__main__":
    main()
