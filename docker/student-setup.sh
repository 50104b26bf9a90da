#!/usr/bin/env bash
# Turns an environment that has the course's dependencies (requirements.txt / environment.yml) into a
# students' environment. Binder runs it from postBuild; the hub image (docker/Dockerfile) from its build.
#
#   bash docker/student-setup.sh COURSE_DIR
#
# COURSE_DIR: where the course repository is, or will be, for the student (Binder: the repository
# itself; a hub: the folder nbgitpuller pulls it into, ~/fine-tuning-lab). Acts on the environment of
# the `python` first on PATH and writes only into that environment's prefix:
#   1. lib/python3.X/site-packages/fine_tuning_lab.pth: `import course` works in every kernel, whatever
#      folder the notebook is in (what `make env` does);
#   2. etc/jupyter/labconfig/page_config.json and etc/jupyter/jupyter_server_config.d/: nbgrader for
#      students, the Validate button and the assignment list on, the instructor's formgrader,
#      create-assignment toolbar and course list off and locked (the files `jupyter labextension
#      disable/lock --level=sys_prefix` and `jupyter server extension disable --sys-prefix` write, written
#      directly: those commands take 5-10 s each);
#   3. etc/jupyter/nbgrader_config.py: Validate uses the course's nbgrader settings (stderr warnings never
#      fail a check, cell timeouts) even when the server runs in a folder above the course, as on a hub.
#      nbgrader reads nbgrader_config.py from the server's folder and from every Jupyter config folder;
#      this one chains to the course's own file, so there is still one nbgrader config.
set -euo pipefail
course_dir=${1:?usage: student-setup.sh COURSE_DIR}

python - "$course_dir" <<'EOF'
import json
import site
import sys
from pathlib import Path

course_dir = sys.argv[1]
etc = Path(sys.prefix) / "etc" / "jupyter"


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(f"wrote {path}")


# 1. The course's packages on every kernel's path.
write(Path(site.getsitepackages()[0]) / "fine_tuning_lab.pth", course_dir + "\n")

# 2. nbgrader's front-end plugins and server extensions for students.
INSTRUCTOR_PLUGINS = ["@jupyter/nbgrader:formgrader", "@jupyter/nbgrader:create-assignment",
                      "@jupyter/nbgrader:course-list"]
INSTRUCTOR_SERVER_EXTENSIONS = ["nbgrader.server_extensions.formgrader", "nbgrader.server_extensions.course_list"]
page_config_path = etc / "labconfig" / "page_config.json"
page_config = json.loads(page_config_path.read_text()) if page_config_path.exists() else {}
for key in ("disabledExtensions", "lockedExtensions"):
    page_config.setdefault(key, {}).update({plugin: True for plugin in INSTRUCTOR_PLUGINS})
write(page_config_path, json.dumps(page_config, indent=2) + "\n")
for name in INSTRUCTOR_SERVER_EXTENSIONS:
    # conf.d files load in name order: these come after nbgrader's own nbgrader.json, which enables all.
    write(etc / "jupyter_server_config.d" / f"{name}.json",
          json.dumps({"ServerApp": {"jpserver_extensions": {name: False}}}, indent=2) + "\n")

# 3. The course's nbgrader settings wherever the server runs.
write(etc / "nbgrader_config.py", f'''"""Fine-Tuning Lab, students' environment (written by docker/student-setup.sh): nbgrader, and so the
Validate button, use the course's own settings from its nbgrader_config.py."""
import os

c = get_config()  # noqa: F821 (provided by traitlets)
course_config = os.path.join(os.environ.get("FTLAB_COURSE_DIR", {course_dir!r}), "nbgrader_config.py")
if os.path.isfile(course_config):
    load_subconfig(course_config)  # noqa: F821
    # A student's assignments (fetched from an nbgrader exchange) live where the server runs.
    c.CourseDirectory.root = os.getcwd()
''')
EOF
