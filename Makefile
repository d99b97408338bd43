# Every target sets itself up: venv, torch (local CPU wheel, pinned), the package, FFmpeg.
# Re-running is fast: each step leaves a stamp and only re-runs when its inputs change.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.stamp-install
FFMPEG_STAMP := $(VENV)/.stamp-ffmpeg

.PHONY: setup test demo bench lint clean-venv

setup: $(STAMP) $(FFMPEG_STAMP)

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch first, pinned: it takes the local CPU wheel; an unpinned torch would pull CUDA packages.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

$(FFMPEG_STAMP): $(BIN)/python
	@bash scripts/ensure_ffmpeg.sh
	touch $@

test: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider

demo: setup
	$(BIN)/python recipes/demo.py

bench: setup
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python benchmarks/dataloading.py --out benchmarks/results
	$(BIN)/python benchmarks/remote.py --out benchmarks/results/remote

lint: setup
	$(BIN)/ruff check src tests recipes benchmarks
	$(BIN)/mypy src

clean-venv:
	rm -rf $(VENV)
