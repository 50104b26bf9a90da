# Fine-Tuning Lab task runner. Students: `make lab`. Everyone else: `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
# nbgrader calls alembic and jupyter from PATH: the environment's bin/ comes first.
export PATH := $(BIN):$(PATH)
export PYTHONDONTWRITEBYTECODE := 1
ASSIGNMENTS := $(notdir $(wildcard source/*_lesson source/quiz))

.PHONY: env lab test test-browser test-lessons-full release clean-notebooks check-notebooks backbones fetch-imagenet bench bench-memory help

help:
	@echo "make lab              create the environment if missing, start JupyterLab on the course"
	@echo "make test             create the environment if missing, run the whole test suite"
	@echo "make test-lessons-full every instructor notebook run by nbval in full (make test: lessons in quick mode)"
	@echo "make test-browser     the browser and Binder/hub tests only, every lesson fully (about 5 min)"
	@echo "make release          regenerate release/ from source/ with nbgrader"
	@echo "make clean-notebooks  strip outputs and execution counts from every notebook"
	@echo "make backbones        re-train the course backbones (about 30 min on 2 CPU cores)"
	@echo "make fetch-imagenet   download the ImageNet MobileNetV2 weights into the frameworks' caches"
	@echo "make bench            print the course's measured figures (transfer, lesson runtime, grading)"
	@echo "make bench-memory     peak memory of each lesson's kernel, Run all and Validate (about 8 min)"

env: $(VENV)/.installed

PIP_INSTALL = TMPDIR=$(CURDIR)/$(VENV)/pip-tmp $(BIN)/python -m pip install -q --disable-pip-version-check --no-cache-dir

$(VENV)/.installed: requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# PyTorch first, then the rest: pip holds every download until its call ends, and PyPI's torch brings about
	# 2.6 GB of CUDA wheels; two calls peak at 8.6 GB of disk instead of 10.9 (benchmarks/install_disk.py).
	# The downloads wait beside the environment, not in /tmp (often a small tmpfs), and are not cached.
	mkdir -p $(VENV)/pip-tmp
	$(PIP_INSTALL) $$(grep -E '^torch' requirements.txt)
	$(PIP_INSTALL) -r requirements.txt
	rm -rf $(VENV)/pip-tmp
	# make the repo's packages (course, autograder) importable from every kernel, wherever it runs
	$(BIN)/python -c "import site; open(site.getsitepackages()[0] + '/fine_tuning_lab.pth', 'w').write('$(CURDIR)\\n')"
	touch $@

lab: env
	$(BIN)/jupyter lab --notebook-dir=$(CURDIR) $(if $(filter 0,$(shell id -u)),--allow-root)

test: env
	$(BIN)/python -m pytest

# The instructor notebooks executed by nbval with every experiment (the lessons take minutes each).
test-lessons-full: env
	FTLAB_NBVAL_FULL=1 $(BIN)/python -m pytest source

# JupyterLab in headless Chromium (tests/test_browser.py, all of it) and the Binder/hub scripts.
test-browser: env
	FTLAB_BROWSER_FULL=1 $(BIN)/python -m pytest tests/test_browser.py tests/test_deploy.py

release: env
	@for a in $(ASSIGNMENTS); do $(BIN)/nbgrader generate_assignment $$a --force --log-level=WARN || exit 1; done

clean-notebooks: env
	$(BIN)/python -m autograder.notebooks clean

check-notebooks: env
	$(BIN)/python -m autograder.notebooks check

backbones: env
	$(BIN)/python -m course.pretrain all

fetch-imagenet: env
	$(BIN)/python -m course.fetch_imagenet

bench: env
	$(BIN)/python -m benchmarks.transfer

bench-memory: env
	$(BIN)/python -m benchmarks.memory
