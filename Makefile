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
	$(BIN)/pip install -q -e ".[dev,peers]"
	touch $(STAMP)

install: $(STAMP)

# Lint first (ruff, pyflakes' rules: pyproject [tool.ruff]), then the tests.
test: $(STAMP)
	$(BIN)/ruff check ertacli tests
	$(BIN)/python -m pytest -q

demo: $(STAMP)
	$(BIN)/ertacache demo --model tiny-flux

# Retrain the committed digit backbones models/tiny-flux and models/tiny-wan from scratch (CPU, seed 0, one
# process per model with one thread each); README "The tiny default" gives the measured time.
train-tiny: $(STAMP)
	$(BIN)/python -m ertacli.tinytrain --out models

clean-results:
	find results -mindepth 1 -maxdepth 1 ! -name .gitkeep -exec rm -rf {} +

# Paper benchmarks: profile -> search -> fit -> generate -> eval with the paper's lambdas, one results table
# (results/<recipe>/bench-*/bench.md, resources.json). Without a GPU or the weights they stop at once with one line
# naming what is missing and the command that gets it. CI without a GPU, tiny random weights of the same classes:
#   make bench-flux BENCH_DEVICE=cpu BENCH_SET='$(BENCH_TINY)'
BENCH_DEVICE ?= cuda
BENCH_SET ?=
BENCH_TINY := --set model.source=tiny --set model.dtype=float32 --set sampling.steps=8 --set sampling.height=32 \
	--set sampling.width=32 --set sampling.frames=5 --set eval.warmup=0 --set eval.timing_rounds=1 \
	--set eval.timing_samples=1 --samples 2 -q

.PHONY: bench-flux bench-wan bench-cogvideox bench-overhead

bench-flux: $(STAMP)
	$(BIN)/ertacache bench --model flux --lambda 0.6 --method ertacache --device $(BENCH_DEVICE) $(BENCH_SET)

bench-wan: $(STAMP)
	$(BIN)/ertacache bench --model wan2.1 --lambda 0.08 --method ertacache --device $(BENCH_DEVICE) $(BENCH_SET)

bench-cogvideox: $(STAMP)
	$(BIN)/ertacache bench --model cogvideox-2b --lambda 0.08 --lambda 0.3 --method ertacache --device $(BENCH_DEVICE) $(BENCH_SET)

# What a cached step costs: uniform plans per predictor against the uncached call, on Wan2.1-1.3B's transformer at
# full size with random weights (no download; README "What a cached step costs at full size").
bench-overhead: $(STAMP)
	$(BIN)/ertacache overhead --model wan2.1-random --device $(BENCH_DEVICE) --set sampling.frames=17 \
		--set sampling.steps=20 --set eval.timing_rounds=3 -r 0.5 -r 0.7 -r 0.8 $(BENCH_SET)
