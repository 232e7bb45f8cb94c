# cloakbench: `make demo` runs the study in miniature and writes its report, `make test` runs the tests.
# Both install what they need first (scripts/setup.sh, idempotent).
SHELL := /bin/bash

export CLOAKBENCH_HOME ?= $(HOME)/.cache/cloakbench
# One cargo target folder outside the clone: fresh clones (CI) reuse earlier builds.
export CARGO_TARGET_DIR ?= $(CLOAKBENCH_HOME)/target
# torch-sys and our build.rs find libtorch in the venv's torch wheel.
export VIRTUAL_ENV := $(CURDIR)/.venv
export PATH := $(VIRTUAL_ENV)/bin:$(PATH)
export LIBTORCH_USE_PYTORCH := 1

BIN := $(CARGO_TARGET_DIR)/release/cloakbench
PIPELINE ?= pipelines/study_demo.toml

.PHONY: setup build lint demo test bench bench-shards bench-zoo lpips clean-runs

setup:
	@scripts/setup.sh

build: setup
	cargo build --release --locked

## Run the demo study (another pipeline: make demo PIPELINE=pipelines/baseline.toml ARGS="--set ingest.dataset=/my/photos").
demo: build
	$(BIN) run $(PIPELINE) --report $(ARGS)

## Formatting and lints, checked as CI checks them (make test runs them first).
lint: setup
	cargo fmt --check
	cargo clippy --release --all-targets --locked -- -D warnings

## All tests: formatting and lints, unit, golden, end-to-end, S3, Parquet read back by Polars and Pandas.
test: build lint
	cargo test --release --locked -- --test-threads=1

## The CPU benchmarks (minutes, not tests): ingest and embed against the raw model, decoding on
## one thread and on all, MTCNN against facenet-pytorch, every cloak method against plain PyTorch. Figures on stdout and in runs/bench/<bench>/bench.parquet.
bench: build
	$(BIN) bench baseline $(ARGS)
	$(BIN) bench decode
	$(BIN) bench detect
	$(BIN) bench cloak $(CLOAK_ARGS)

## A sharded run as a Slurm array (100 shards of lfw158, 5% crashing once) against one process:
## wall times, overhead per shard, tables equal (minutes; installs a single-node Slurm).
bench-shards: build
	scripts/bench_shards.sh

## Every model: probe and 1-NN accuracy (facescrub12), LFW verification AUC, images/s.
bench-zoo: build
	$(BIN) bench zoo $(ARGS)

## LPIPS-AlexNet for LowKey's budget, from torchvision's ImageNet AlexNet that you supply
## (make lpips ALEXNET=/path/alexnet-owt-7be5be79.pth) and the lpips wheel's linear layers.
LPIPS_LIN = $$($(VIRTUAL_ENV)/bin/python -c 'import lpips, os; print(os.path.join(os.path.dirname(lpips.__file__), "weights/v0.1/alex.pth"))')
lpips: setup
	@test -n "$(ALEXNET)" || { echo "usage: make lpips ALEXNET=/path/to/alexnet-owt-7be5be79.pth" >&2; exit 2; }
	python scripts/convert_lpips.py "$(ALEXNET)" "$(LPIPS_LIN)" "$${CLOAKBENCH_MODELS:-$(CLOAKBENCH_HOME)/models}/lpips_alex.safetensors"

clean-runs:
	rm -rf runs
