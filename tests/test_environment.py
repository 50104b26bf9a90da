"""One dependency list: environment.yml's pip section is requirements.txt, and the installed versions obey it."""
from importlib.metadata import version

import yaml
from packaging.requirements import Requirement

from conftest import REPO


def requirement_lines():
    lines = (REPO / "requirements.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_environment_yml_pip_section_matches_requirements_txt():
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert pip_section == requirement_lines()
    assert "python=3.11" in env["dependencies"]


def test_installed_packages_satisfy_requirements():
    for line in requirement_lines():
        req = Requirement(line)
        installed = version(req.name)
        assert req.specifier.contains(installed, prereleases=True), f"{req.name} {installed} does not satisfy {line}"
