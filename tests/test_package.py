"""Importing the course package is safe: no framework at import time, and torch-then-TF works."""
from conftest import run_python


def test_core_modules_import_no_framework():
    result = run_python("""
        import sys
        import course, course.data, course.weights, course.plots, autograder, autograder.notebooks
        print(sorted(m for m in ("tensorflow", "torch", "torchvision", "keras") if m in sys.modules))
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_each_framework_module_imports_only_its_framework():
    result = run_python("""
        import sys
        import course.torch_tools
        print("tensorflow" in sys.modules, "torchvision" in sys.modules)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False True"
    result = run_python("""
        import sys
        import course.keras_tools
        print("tensorflow" in sys.modules, "torch" in sys.modules)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "True False"


def test_torch_first_then_tensorflow_works_in_one_process():
    result = run_python("""
        import course.torch_tools, course.keras_tools
        print("both")
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "both"


# ---- course.memory_to_spare / enough_memory: the lessons skip a whole-network run that would not fit -------------
def fake_cgroup(root, version, limit, used, inactive):
    folder = root if version == 2 else root / "memory"
    folder.mkdir(parents=True, exist_ok=True)
    names = ("memory.max", "memory.current") if version == 2 else ("memory.limit_in_bytes", "memory.usage_in_bytes")
    (folder / names[0]).write_text(f"{limit}\n")
    (folder / names[1]).write_text(f"{used}\n")
    key = "inactive_file" if version == 2 else "total_inactive_file"
    (folder / "memory.stat").write_text(f"anon 1\n{key} {inactive}\n" + ("inactive_file 7\n" if version == 1 else ""))


def test_memory_to_spare_reads_the_containers_cgroup(tmp_path, monkeypatch):
    import course
    monkeypatch.delenv("FTLAB_MEMORY_LIMIT", raising=False)
    GiB = 2**30
    for version in (2, 1):
        root = tmp_path / f"v{version}"
        monkeypatch.setenv("FTLAB_CGROUP_ROOT", str(root))
        fake_cgroup(root, version, 2 * GiB, int(1.5 * GiB), GiB // 4)  # page cache that can go counts as free
        assert course.memory_to_spare() == 2 * GiB - int(1.5 * GiB) + GiB // 4
        fake_cgroup(root, version, "max" if version == 2 else 9223372036854771712, GiB, 0)
        assert course.memory_to_spare() is None
    monkeypatch.setenv("FTLAB_CGROUP_ROOT", str(tmp_path / "nothing here"))
    assert course.memory_to_spare() is None


def test_enough_memory_says_what_it_skips(monkeypatch, capsys):
    import course
    monkeypatch.setenv("FTLAB_MEMORY_LIMIT", "64G")  # far above this test process
    assert course.enough_memory(1.0, "training every layer") and capsys.readouterr().out == ""
    monkeypatch.setenv("FTLAB_MEMORY_LIMIT", "2G")
    spare = course.memory_to_spare()
    assert 0 < spare < 2 * 2**30  # this process's own resident memory counts against it
    assert not course.enough_memory(2.0, "training every layer")
    assert "skipped: training every layer needs about 2 GiB more" in capsys.readouterr().out
