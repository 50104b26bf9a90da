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
