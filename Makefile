# ertacache: install, test, demo.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test demo train-tiny clean-results

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	# torch first, pinned: an unpinned torch pulls a multi-GB build; this pair installs from local disk here.
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

demo: $(STAMP)
	$(BIN)/ertacache demo --model tiny-flux

# Retrain the bundled digit backbones into models/tiny-flux and models/tiny-wan (CPU, seeded, ~15-25 min on 2 cores).
train-tiny: $(STAMP)
	$(BIN)/python -m ertacli.tinytrain --out models

clean-results:
	find results -mindepth 1 -maxdepth 1 ! -name .gitkeep -exec rm -rf {} +
