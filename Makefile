# make demo       - set up .venv and Fashion-MNIST, train SESEMI and the supervised baseline, compare
# make test       - check the format, then run the test suite under both TensorFlow generations
# make setup      - build .venv (Python 3.11, TF 2.x) and .venv-tf1 (Python 3.7, TF 1.15)
# make setup-gpu  - build .venv-gpu (Python 3.11, TF 2.x with pip's CUDA 12 libraries, for NVIDIA GPUs);
#                   then VENV=.venv-gpu makes test, test-tf2 and demo use it
SHELL := /bin/bash
PYTHON3 ?= python3.11
# The TF 2.x venv that test-tf2 and demo run in: .venv (CPU) or .venv-gpu.
VENV ?= .venv
PYENV_ROOT ?= $(shell pyenv root 2>/dev/null)
PYTHON37 ?= $(firstword $(wildcard $(PYENV_ROOT)/versions/3.7*/bin/python3.7) $(shell command -v python3.7 2>/dev/null))
PYTEST_ARGS ?= -q

.PHONY: setup setup-gpu test lint test-tf2 test-tf1 test-tf1-run coverage demo fashion-mnist tcmalloc clean
FASHION_DIR := /usr/share/datasets/fashion-mnist

# Recipes that start TensorFlow run it with tcmalloc preloaded when it is installed.
WITH_MALLOC := source test/malloc.sh &&

setup: .venv/.done .venv-tf1/.done tcmalloc

# The GPU build of TF 2.x gets a venv of its own: tensorflow-cpu, in .venv, installs the
# same `tensorflow` package, and the two wheels would overwrite each other's files.
setup-gpu: .venv-gpu/.done tcmalloc

# $(call make_venv,PYTHON): builds the venv holding the target afresh with PYTHON and
# installs the requirement files the target depends on into it, constrained by
# requirements-lock.txt when it is one of them.
LOCK := requirements-lock.txt
# The coverage hook: a .pth file that makes every Python process of the venv start
# coverage when COVERAGE_PROCESS_START names a config (and does nothing otherwise).
export COVERAGE_HOOK := import os, site; open(os.path.join(site.getsitepackages()[0], 'sesemi_coverage.pth'), 'w').write('import coverage; coverage.process_startup()\n')
define make_venv
	rm -rf $(@D)
	$(1) -m venv $(@D)
	$(@D)/bin/pip install -q $(addprefix -r ,$(filter-out $(LOCK),$^))$(if $(filter $(LOCK),$^), -c $(LOCK))
	$(@D)/bin/python -c "$$COVERAGE_HOOK"
	touch $@
endef

.venv/.done: requirements.txt requirements-dev.txt $(LOCK)
	$(call make_venv,$(PYTHON3))

.venv-gpu/.done: requirements-gpu.txt requirements-dev.txt
	$(call make_venv,$(PYTHON3))

.venv-tf1/.done: requirements.txt requirements-dev.txt $(LOCK)
	@if [ -z "$(PYTHON37)" ]; then echo "Python 3.7 not found (install it with pyenv: pyenv install 3.7.16)"; exit 1; fi
	$(call make_venv,$(PYTHON37))

# The two suites run side by side, as two shell jobs (make -j2 with the TF 1.15 suite's
# recursive make ran them one after the other): most of their time is single-threaded
# start-up of the many short training runs they make. The TF 2.x suite prints as it goes,
# the TF 1.15 suite's output ($(TF1_LOG)) follows it. Both run under coverage, subprocesses
# included; the combined report comes last.
TF1_LOG := .test-tf1.log
test: tcmalloc lint
	rm -rf $(COVERAGE_DIR)
	@status=0; \
	$(MAKE) --no-print-directory test-tf1 > $(TF1_LOG) 2>&1 & tf1=$$!; \
	$(MAKE) --no-print-directory test-tf2 || status=1; \
	wait $$tf1 || status=1; \
	echo "TF 1.15 suite ($(TF1_LOG)):"; cat $(TF1_LOG); \
	exit $$status
	$(MAKE) coverage

# Format, lint and the import contracts (ruff and import-linter; settings in pyproject.toml).
lint: $(VENV)/.done
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

# $(call under_coverage,VENV,SUITE): runs pytest in VENV with coverage of its process and
# of every Python process it starts (COVERAGE_PROCESS_START, read by the venv's coverage
# hook), into $(COVERAGE_DIR)/SUITE.
COVERAGE_DIR := $(CURDIR)/.coverage-data
define under_coverage
	mkdir -p $(COVERAGE_DIR)/$(2)
	$(WITH_MALLOC) COVERAGE_PROCESS_START=$(CURDIR)/.coveragerc COVERAGE_FILE=$(COVERAGE_DIR)/$(2)/cov \
		$(1)/bin/python -m pytest $(PYTEST_ARGS) tests
endef

test-tf2: $(VENV)/.done tcmalloc
	$(call under_coverage,$(VENV),tf2)

test-tf1:
	@if [ -z "$(PYTHON37)" ] && [ "$$CI" != "true" ]; then \
		echo "SKIPPED: TF 1.15 suite needs Python 3.7 (pyenv install 3.7.16); CI requires it."; \
	else \
		$(MAKE) .venv-tf1/.done tcmalloc && $(MAKE) test-tf1-run; \
	fi

test-tf1-run:
	$(call under_coverage,.venv-tf1,tf1)

# Product-line coverage of each suite and of both together (the processes' data are kept).
coverage: $(VENV)/.done
	@for suite in tf2 tf1; do \
		if ls $(COVERAGE_DIR)/$$suite/cov.* >/dev/null 2>&1; then \
			COVERAGE_FILE=$(COVERAGE_DIR)/$$suite/cov $(VENV)/bin/coverage combine -q --keep; \
			echo "Coverage, $$suite suite:"; \
			$(VENV)/bin/coverage report --data-file=$(COVERAGE_DIR)/$$suite/cov --format=total; \
		fi; \
	done
	$(VENV)/bin/coverage combine -q --keep --data-file=$(COVERAGE_DIR)/both \
		$$(ls $(COVERAGE_DIR)/tf2/cov $(COVERAGE_DIR)/tf1/cov 2>/dev/null)
	@echo "Coverage, both suites:"
	$(VENV)/bin/coverage report --data-file=$(COVERAGE_DIR)/both

demo: $(VENV)/.done fashion-mnist tcmalloc
	$(WITH_MALLOC) $(VENV)/bin/python demo.py $(DEMO_ARGS)

# Debian ships Fashion-MNIST as a package; elsewhere demo.py says which files to put where.
fashion-mnist:
	@if [ ! -f $(FASHION_DIR)/t10k-labels-idx1-ubyte.gz ]; then \
		if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
			echo "Installing Debian's dataset-fashion-mnist ..."; \
			apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null || true; \
		else \
			echo "Fashion-MNIST is not in $(FASHION_DIR) and apt-get is not usable here;"; \
			echo "run: sudo apt-get install dataset-fashion-mnist, or pass DEMO_ARGS=--dataset=FOLDER"; \
		fi; \
	fi

# tcmalloc halves TensorFlow's CPU step times here (see test/malloc.sh); optional.
tcmalloc:
	@source test/malloc.sh; if [ -z "$$tcmalloc_lib" ]; then \
		if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
			echo "Installing Debian's libtcmalloc-minimal4 ..."; \
			(apt-get update -qq && apt-get install -y -qq libtcmalloc-minimal4 >/dev/null) || \
				echo "libtcmalloc-minimal4 could not be installed; TensorFlow runs slower with glibc's malloc"; \
		else \
			echo "Note: TensorFlow runs faster here with tcmalloc (sudo apt-get install libtcmalloc-minimal4)"; \
		fi; \
	fi

clean:
	rm -rf .venv .venv-tf1 .venv-gpu .pytest_cache .coverage-data
