"""The weight-selection setting FTLAB_WEIGHTS behaves as documented, and never falls back silently."""
import json
import shutil
import subprocess
import sys

import pytest

from conftest import REPO
from course import weights

CHOOSE = "from course import weights; c = weights.choose({fw!r}); print(c.kind, c.path)"


def offline(code, env, timeout=300):
    """Run python code with no network at all (a fresh network namespace)."""
    cmd = ["unshare", "-n", "sh", "-c", 'ip link set lo up 2>/dev/null; exec "$0" -c "$1"', sys.executable, code]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO)


@pytest.fixture
def clean_home(tmp_path, monkeypatch):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    return env


@pytest.mark.parametrize("fw", ["keras", "torch"])
def test_auto_offline_without_cache_uses_the_course_backbone(fw, clean_home):
    result = offline(CHOOSE.format(fw=fw), {**clean_home, "FTLAB_WEIGHTS": "auto"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0] == "course"
    assert result.stdout.split()[1] == str(weights.COURSE_FILES[fw])


@pytest.mark.parametrize("fw", ["keras", "torch"])
def test_auto_prefers_imagenet_weights_in_the_framework_cache(fw, clean_home, tmp_path):
    cached = {"keras": tmp_path / ".keras" / "models", "torch": tmp_path / "cache" / "torch" / "hub" / "checkpoints"}[fw]
    cached.mkdir(parents=True)
    (cached / weights.IMAGENET_FILES[fw]).write_bytes(b"placeholder")
    result = offline(CHOOSE.format(fw=fw), {**clean_home, "FTLAB_WEIGHTS": "auto"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["imagenet", str(cached / weights.IMAGENET_FILES[fw])]


def test_explicit_imagenet_offline_is_a_clear_error(clean_home):
    result = offline(CHOOSE.format(fw="torch"), {**clean_home, "FTLAB_WEIGHTS": "imagenet"})
    assert result.returncode != 0
    assert "cannot be reached" in result.stderr and "FTLAB_WEIGHTS=course" in result.stderr


def test_none_means_random_weights_and_says_so(monkeypatch):
    monkeypatch.setenv("FTLAB_WEIGHTS", "none")
    choice = weights.choose("keras")
    assert choice.kind == "none" and choice.path is None and "random" in str(choice)


def test_unknown_value_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("FTLAB_WEIGHTS", "imagenet21k")
    with pytest.raises(ValueError, match="imagenet21k.*auto, imagenet, course, none"):
        weights.choose("torch")


def test_missing_course_file_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("FTLAB_WEIGHTS", "course")
    monkeypatch.setitem(weights.COURSE_FILES, "torch", tmp_path / "gone.pt")
    with pytest.raises(FileNotFoundError, match="python -m course.pretrain torch"):
        weights.choose("torch")


def test_fetch_imagenet_offline_fails_loudly(clean_home):
    env = {**clean_home, "PYTHONPATH": str(REPO)}
    cmd = ["unshare", "-n", sys.executable, "-m", "course.fetch_imagenet"]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=REPO)
    assert result.returncode == 1
    assert "FAILED to download" in result.stderr and "course backbone stays in use" in result.stderr


def test_committed_backbones_are_small_and_recorded():
    sizes = sum(p.stat().st_size for p in weights.BACKBONE_DIR.iterdir())
    assert sizes < 12 * 1024 * 1024, f"course/backbones holds {sizes / 1e6:.1f} MB"
    record = json.loads(weights.RECORD_FILE.read_text())
    assert set(record) == {"keras", "torch"}
