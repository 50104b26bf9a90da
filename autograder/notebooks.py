"""Keep notebooks clean in git: no outputs, no execution counts, one kernel, and the top-level metadata
that JupyterLab itself writes, so that a notebook opens in JupyterLab unmodified (no dirty tab, no autosave
that changes an instructor's `git status`).

    python -m autograder.notebooks clean   # rewrite every notebook under source/ and release/
    python -m autograder.notebooks check   # list offenders, exit 1 if any
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
# The course's reference Python: the one its environment is built and tested with.
PYTHON_VERSION = "3.11.7"
# What JupyterLab stores in a notebook's metadata when its kernel starts: the kernel's `language_info`
# (ipykernel's `IPythonKernel.language_info`), compared key by key, version included. With exactly this
# Python a notebook opens clean; with another 3.11.x only "version" differs, and JupyterLab marks the
# notebook modified because of that line alone (`make clean-notebooks` puts it back).
LANGUAGE_INFO = {
    "codemirror_mode": {"name": "ipython", "version": 3},
    "file_extension": ".py",
    "mimetype": "text/x-python",
    "name": "python",
    "nbconvert_exporter": "python",
    "pygments_lexer": "ipython3",
    "version": PYTHON_VERSION,
}


FIXTURES = "tests/fixtures/"  # student submissions kept as they were handed in (damaged on purpose)


def tracked_notebooks(root: Path = ROOT) -> list[Path]:
    """The course's notebooks: source/ and release/ on disk, and any other notebook git tracks."""
    out = subprocess.run(["git", "ls-files", "-z", "*.ipynb"], cwd=root, capture_output=True, text=True).stdout
    in_git = {root / name for name in out.split("\0") if name and not name.startswith(FIXTURES)}
    on_disk = {p for d in ("source", "release") for p in (root / d).rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts}
    return sorted(on_disk | in_git)


def problems(nb: dict) -> list[str]:
    found = []
    for i, cell in enumerate(nb.get("cells", [])):
        if cell.get("cell_type") == "code" and (cell.get("outputs") or cell.get("execution_count") is not None):
            found.append(f"cell {i} has stored outputs or an execution count")
    if nb.get("metadata", {}).get("kernelspec", {}).get("name") != KERNELSPEC["name"]:
        found.append(f"kernel is not {KERNELSPEC['name']!r}")
    elif nb["metadata"]["kernelspec"] != KERNELSPEC:
        found.append(f"kernelspec is not {KERNELSPEC} (what JupyterLab writes for it)")
    if nb.get("metadata", {}).get("language_info") != LANGUAGE_INFO:
        found.append("language_info is not what JupyterLab writes (run `make clean-notebooks`)")
    return found


def clean(nb: dict) -> dict:
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code":
            cell["outputs"], cell["execution_count"] = [], None
    nb.setdefault("metadata", {})["kernelspec"] = dict(KERNELSPEC)
    nb["metadata"]["language_info"] = json.loads(json.dumps(LANGUAGE_INFO))  # a deep copy
    return nb


def main(argv=None) -> int:
    command = (argv or sys.argv[1:] or ["check"])[0]
    bad = 0
    for path in tracked_notebooks():
        if not path.exists():
            continue
        nb = json.loads(path.read_text())
        if command == "clean":
            path.write_text(json.dumps(clean(nb), indent=1, ensure_ascii=False) + "\n")
        elif problems(nb):
            bad += 1
            print(f"{path.relative_to(ROOT)}: {'; '.join(problems(nb))}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
