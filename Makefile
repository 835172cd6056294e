# The course's entry points. Quick start on a fresh machine: `make course`, then `make test`.
SHELL := /bin/bash
ROOT := $(CURDIR)
VENV := $(ROOT)/.venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.ftcourse-installed
PRESET ?= cpu
SUBMISSIONS ?= $(ROOT)/autograder/submitted
ASSIGNMENT ?= 03_sft
# nbgrader runs alembic from PATH: the virtual environment's bin comes first.
export PATH := $(BIN):$(PATH)

.PHONY: setup course test lab release grade benchmark clean

setup: $(STAMP)

$(STAMP): requirements.txt requirements-embedded.txt pyproject.toml scripts/setup_env.sh
	bash scripts/setup_env.sh
	touch $@

## Execute every solution notebook headless (papermill) and print a table per notebook.
course: setup
	$(BIN)/python scripts/run_course.py --preset $(PRESET)

## Run every test: units, notebook execution, the nbgrader round trip, freshness of generated files. In parallel:
## TEST_WORKERS processes (default 2), each with its share of the cores and its own tests (tests/conftest.py groups
## the tests that share a notebook's execution, longest first); TEST_WORKERS=0 runs them in this one process.
TEST_WORKERS ?= 2
test: setup
	$(BIN)/python -m pytest -ra --durations=40 $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS)) tests

## JupyterLab on the learner notebooks.
lab: setup
	cd course && $(BIN)/jupyter lab

## Regenerate the instructor notebooks from their sources, then course/ with nbgrader.
release: setup
	$(BIN)/python scripts/release.py

## Instructor: grade a folder of submissions (SUBMISSIONS=<dir>/<student>/<assignment>/); needs $$FTCOURSE_HELDOUT_SEED.
## PRESET=... on the command line overrides the preset each submission ran with (autograder/README.md).
grade: setup
	FTCOURSE_PRESET=$(if $(filter command line,$(origin PRESET)),$(PRESET),) FTCOURSE_SUBMISSIONS=$(SUBMISSIONS) \
	  $(BIN)/python scripts/grade.py --assignment $(ASSIGNMENT)

## Where a training step's time goes, the course's training path vs TRL's defaults vs a plain loop, evaluation before
## and after, then padded vs grouped vs packed, then a GRPO step with TRL's trainer vs the course's; writes
## build/benchmark_training_<preset>.md, benchmark_layouts_<preset>.md and benchmark_rl_<preset>.md.
benchmark: setup
	$(BIN)/python scripts/benchmark_training.py --preset $(PRESET)
	$(BIN)/python scripts/benchmark_layouts.py --preset $(PRESET)
	$(BIN)/python scripts/benchmark_rl.py --preset $(PRESET)

clean:
	rm -rf build .grading autograder/autograded autograder/feedback autograder/gradebook.db
