"""Students on Binder and on a JupyterHub: the repo2docker files (postBuild, start) and the hub image's
steps (docker/student-setup.sh, docker/student-env.sh), run for real in a fresh virtual environment.

No Docker here, so neither repo2docker nor `docker build` runs: what runs is what they would run. The
fresh environment sees the course's installed packages through a path entry, as if `pip install -r
requirements.txt` had filled it, and gets the files pip puts into an environment's prefix (etc/jupyter,
share/jupyter); the scripts then act on it alone, never on .venv. Its `jupyter` commands are its own.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from importlib.metadata import entry_points
from pathlib import Path

import nbformat
import pytest

from conftest import REPO

VENV = Path(sys.prefix)
TOKEN = "fine-tuning-lab-deploy-test"
INSTRUCTOR_PLUGINS = {"@jupyter/nbgrader:formgrader", "@jupyter/nbgrader:create-assignment",
                      "@jupyter/nbgrader:course-list"}


def tree_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(folder)).encode() + path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    """A new virtual environment (its own prefix, python and jupyter commands) and a clean environment
    for processes run in it: its bin/ first on PATH, a throw-away HOME, no Jupyter path overrides."""
    root = tmp_path_factory.mktemp("deploy")
    env_dir = root / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True)
    python = env_dir / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # The installed packages (a path entry only: .venv's own .pth files, the course's included, stay unread).
    (site / "installed_packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # What pip would have put into the prefix: Jupyter's config (copied: the scripts write there) and data.
    shutil.copytree(VENV / "etc" / "jupyter", env_dir / "etc" / "jupyter")
    (env_dir / "share").mkdir()
    (env_dir / "share" / "jupyter").symlink_to(VENV / "share" / "jupyter")
    for ep in entry_points(group="console_scripts"):
        if ep.name.startswith("jupyter"):
            module, _, attr = ep.value.partition(":")
            script = env_dir / "bin" / ep.name
            script.write_text(f"#!{python}\nimport sys\nimport {module} as m\nsys.exit(m.{attr.strip()}())\n")
            script.chmod(0o755)
    home = root / "home"
    home.mkdir()
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "FTLAB_", "OMP_", "MKL_",
                                                                       "OPENBLAS_", "TF_NUM", "NBGRADER"))}
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if Path(p) != VENV / "bin")
    env = {**keep, "HOME": str(home), "PATH": f"{env_dir / 'bin'}{os.pathsep}{path}", "PYTHONNOUSERSITE": "1"}
    before = tree_digest(VENV / "etc")
    yield {"dir": env_dir, "python": python, "site": site, "home": home, "env": env}
    assert tree_digest(VENV / "etc") == before, "the scripts changed .venv's configuration"


def run(fresh, *command: str, cwd: Path, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(list(command), cwd=cwd, env={**fresh["env"], **(extra_env or {})},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"
    return result


def nbgrader_settings(fresh, cwd: Path) -> dict:
    """The nbgrader configuration the Validate button would load with the server started in ``cwd``."""
    code = """
import json
from nbgrader.server_extensions.validate_assignment.handlers import ValidateAssignmentHandler
from nbgrader.validator import Validator
config = ValidateAssignmentHandler.load_config(None)
print(json.dumps({"ignore_stderr": config.IgnorePattern.enabled, "timeout": config.Execute.timeout,
                  "root": config.CourseDirectory.root,
                  "preprocessors": [p.__name__ for p in Validator.class_traits()["preprocessors"].default_args[0]]}))
"""
    return json.loads(run(fresh, str(fresh["python"]), "-c", code, cwd=cwd).stdout.strip().splitlines()[-1])


def test_binder_postbuild_and_start(fresh):
    """repo2docker runs postBuild in the repository after installing environment.yml, and `start` at launch."""
    run(fresh, "bash", "postBuild", cwd=REPO)
    # `import course` from any folder (a notebook's own folder), through the environment's .pth.
    found = run(fresh, str(fresh["python"]), "-c", "import course; print(course.__file__)", cwd=fresh["home"])
    assert found.stdout.strip() == str(REPO / "course" / "__init__.py")
    # The instructor's nbgrader extensions are off, the students' on, at the environment's level.
    page_config = json.loads((fresh["dir"] / "etc" / "jupyter" / "labconfig" / "page_config.json").read_text())
    for key in ("disabledExtensions", "lockedExtensions"):  # locked: not re-enabled from the Extension Manager
        assert {name for name, on in page_config[key].items() if on} == INSTRUCTOR_PLUGINS, key
    server = {}
    for path in sorted((fresh["dir"] / "etc" / "jupyter" / "jupyter_server_config.d").glob("*.json")):
        server.update(json.loads(path.read_text()).get("ServerApp", {}).get("jpserver_extensions", {}))
    assert {k: v for k, v in server.items() if k.startswith("nbgrader")} == {
        "nbgrader.server_extensions.formgrader": False, "nbgrader.server_extensions.course_list": False,
        "nbgrader.server_extensions.validate_assignment": True, "nbgrader.server_extensions.assignment_list": True}
    # Binder's server runs in the repository: the course's nbgrader settings apply to Validate.
    settings = nbgrader_settings(fresh, cwd=REPO)
    assert settings["ignore_stderr"] is True and settings["timeout"] == 180
    assert "IgnorePattern" in settings["preprocessors"]
    # start: the kernels' settings, then the server's command line.
    env = run(fresh, str(REPO / "start"), "env", cwd=REPO).stdout.splitlines()
    assert "FTLAB_WEIGHTS=course" in env
    assert any(re.fullmatch(r"OMP_NUM_THREADS=[1-9][0-9]*", line) for line in env)
    kept = run(fresh, str(REPO / "start"), "env", cwd=REPO, extra_env={"FTLAB_WEIGHTS": "imagenet"}).stdout
    assert "FTLAB_WEIGHTS=imagenet" in kept.splitlines()


@pytest.mark.parametrize("cpu_max, threads", [("max 100000", None), ("150000 100000", 1), ("50000 100000", 1),
                                              ("100000000 100000", None)])
def test_student_env_follows_the_cpu_quota(tmp_path, cpu_max, threads):
    """One math thread per CPU of the container's quota (cgroup v2 here; v1 reads cpu.cfs_quota_us), never
    more than the CPUs it may run on; variables already set are kept."""
    (tmp_path / "cpu.max").write_text(cpu_max + "\n")
    script = f". {REPO / 'docker' / 'student-env.sh'}; echo $OMP_NUM_THREADS $TF_NUM_INTRAOP_THREADS $MKL_NUM_THREADS"
    env = {k: v for k, v in os.environ.items() if not k.endswith("_THREADS")}
    out = subprocess.run(["sh", "-euc", script], env={**env, "FTLAB_CGROUP_ROOT": str(tmp_path)},
                         capture_output=True, text=True, check=True).stdout.split()
    expected = str(threads or len(os.sched_getaffinity(0)))
    assert out == [expected] * 3
    kept = subprocess.run(["sh", "-euc", script], env={**env, "FTLAB_CGROUP_ROOT": str(tmp_path), "OMP_NUM_THREADS": "7"},
                          capture_output=True, text=True, check=True).stdout.split()
    assert kept[0] == "7"


def test_cgroup_v1_quota(tmp_path):
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    out = subprocess.run(["sh", "-euc", f". {REPO / 'docker' / 'student-env.sh'}; echo $FTLAB_CPUS"],
                         env={"PATH": os.environ["PATH"], "FTLAB_CGROUP_ROOT": str(tmp_path)},
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == "1"


def stderr_test_notebook() -> nbformat.NotebookNode:
    """One graded test cell that passes but writes to stderr (as TensorFlow and PyTorch warnings do): plain
    nbgrader fails it; with the course's settings (IgnorePattern) Validate passes it."""
    from nbgrader.utils import compute_checksum

    cell = nbformat.v4.new_code_cell('import sys\nprint("a framework warning", file=sys.stderr)\nassert 1 + 1 == 2')
    cell.metadata["nbgrader"] = {"grade": True, "grade_id": "check", "locked": True, "points": 1,
                                 "schema_version": 3, "solution": False, "task": False}
    cell.metadata["nbgrader"]["checksum"] = compute_checksum(cell)
    nb = nbformat.v4.new_notebook(cells=[cell])
    nb.metadata["kernelspec"] = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
    return nb


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(port: int, path: str, method: str = "GET") -> tuple[int, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                     headers={"Authorization": f"token {TOKEN}"})
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_hub_image_steps_then_a_students_server(fresh):
    """The hub image: docker/student-setup.sh for a course that nbgitpuller will pull into ~/fine-tuning-lab,
    docker/student-env.sh at start; then JupyterLab from the home folder, as the Docker Stacks start it."""
    home = fresh["home"]
    course = home / "fine-tuning-lab"  # what nbgitpuller's link (README) pulls
    course.mkdir()
    shutil.copy(REPO / "nbgrader_config.py", course)
    shutil.copytree(REPO / "course", course / "course", ignore=shutil.ignore_patterns("__pycache__", "backbones"))
    (course / "work").mkdir()
    nbformat.write(stderr_test_notebook(), course / "work" / "stderr.ipynb")
    run(fresh, "bash", str(REPO / "docker" / "student-setup.sh"), str(course), cwd=home)
    found = run(fresh, str(fresh["python"]), "-c", "import course; print(course.__file__)", cwd=home)
    assert found.stdout.strip() == str(course / "course" / "__init__.py")
    settings = nbgrader_settings(fresh, cwd=home)  # no nbgrader_config.py in the server's folder
    assert settings == {"ignore_stderr": True, "timeout": 180, "root": str(home),
                        "preprocessors": ["CheckCellMetadata", "ClearOutput", "Execute", "IgnorePattern"]}

    port = free_port()
    as_root = " --allow-root" if os.geteuid() == 0 else ""
    command = (f". {REPO / 'docker' / 'student-env.sh'} && exec jupyter lab --no-browser --port={port} "
               f"--ip=127.0.0.1 --IdentityProvider.token={TOKEN} --ServerApp.root_dir={home}{as_root}")
    log = open(home / "server.log", "w")
    server = subprocess.Popen(["sh", "-c", command], cwd=home, env=fresh["env"], stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(240):
            try:
                if http(port, "/api/status")[0] == 200:
                    break
            except OSError:
                assert server.poll() is None, (home / "server.log").read_text()[-3000:]
                time.sleep(0.25)
        status, page = http(port, "/lab")
        assert status == 200
        page_config = json.loads(re.search(r'id="jupyter-config-data"[^>]*>\s*(\{.*?\})\s*</script>', page, re.S)[1])
        # What the page tells JupyterLab's front end: the instructor's plugins off and locked, the rest on.
        assert set(page_config["disabledExtensions"]) == set(page_config["lockedExtensions"]) == INSTRUCTOR_PLUGINS
        assert "@jupyter/nbgrader" in {e["name"] for e in page_config["federated_extensions"]}
        assert http(port, "/formgrader")[0] == 404, "the formgrader is served to students"
        assert http(port, "/nbgrader_version?version=0.9.6")[0] == 200, "no Validate server extension"
        status, body = http(port, "/assignments/validate?path=fine-tuning-lab/work/stderr.ipynb", method="POST")
        result = json.loads(body)
        assert status == 200 and result["success"] is True, result
        assert result["value"] == {}, f"Validate did not use the course's nbgrader settings: {result['value']}"
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def test_the_recipe_files_agree():
    """repo2docker would build a Dockerfile at the root (or in binder/) instead of environment.yml: the hub
    image's Dockerfile lives in docker/, and there is no binder/ folder hiding postBuild and start. Every file
    the Dockerfile copies exists."""
    assert not (REPO / "Dockerfile").exists() and not (REPO / "binder").exists() and not (REPO / ".binder").exists()
    assert os.access(REPO / "postBuild", os.X_OK) and os.access(REPO / "start", os.X_OK)
    dockerfile = (REPO / "docker" / "Dockerfile").read_text()
    copied = re.search(r"^COPY (?:--\S+ )*(.+) /tmp/ftlab/$", dockerfile, re.M)[1].split()
    assert copied and all((REPO / name).is_file() for name in copied), copied
    assert "student-setup.sh" in dockerfile and "before-notebook.d" in dockerfile and "nbgitpuller" in dockerfile
