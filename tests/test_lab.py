"""A student's JupyterLab: the real server starts on the course, shows the lessons, and its nbgrader
Validate button (the validate_assignment server extension) runs the course's nbgrader config."""
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import REPO

TOKEN = "fine-tuning-lab-test"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(port, path, method="GET", timeout=300):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                 headers={"Authorization": f"token {TOKEN}"})
    with urllib.request.urlopen(req, timeout=timeout) as response:
        return response.status, response.read().decode()


@pytest.fixture
def lab(tmp_path):
    """JupyterLab started like `make lab` does, from a course folder holding the repo's release/."""
    course = tmp_path / "course"
    course.mkdir()
    shutil.copy(REPO / "nbgrader_config.py", course)
    shutil.copytree(REPO / "release", course / "release")
    port = free_port()
    jupyter = Path(sys.executable).parent / "jupyter"
    as_root = ["--allow-root"] if os.geteuid() == 0 else []  # as `make lab` does
    proc = subprocess.Popen([str(jupyter), "lab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
                             f"--IdentityProvider.token={TOKEN}", f"--notebook-dir={course}", *as_root],
                            cwd=course, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(120):
            try:
                request(port, "/api/status")
                break
            except OSError:
                if proc.poll() is not None:
                    pytest.fail(f"jupyter lab exited: {proc.stderr.read()[-2000:]}")
                time.sleep(0.5)
        yield port, course
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_lab_serves_the_course_and_validates_a_student_notebook(lab):
    port, course = lab
    status, page = request(port, "/lab")
    assert status == 200 and "JupyterLab" in page
    _, listing = request(port, "/api/contents/release")
    assert {"keras_lesson", "pytorch_lesson", "quiz"} <= {item["name"] for item in json.loads(listing)["content"]}
    _, version = request(port, "/nbgrader_version?version=0.9.6")
    assert json.loads(version)["success"] is True
    # What the Validate button does: the untouched student quiz fails its checks, with a message.
    before = (course / "release" / "quiz" / "quiz.ipynb").read_bytes()
    _, body = request(port, "/assignments/validate?path=release/quiz/quiz.ipynb", method="POST")
    result = json.loads(body)
    assert result["success"] is True, result
    assert result["value"].get("failed"), result["value"]
    assert (course / "release" / "quiz" / "quiz.ipynb").read_bytes() == before
