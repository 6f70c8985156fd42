# Quick start: `make train` (MoCo on Fashion-MNIST, ~7 min on 2 CPU cores, prints the kNN accuracy) and `make test`.
PY ?= python3
export PYTHONUNBUFFERED=1

.PHONY: setup train test test-heavy bench quality ablations clean

setup:
	bash scripts/setup.sh

train: setup
	fastmoco-train $(ARGS)

# the quick suite (under 10 minutes on 2 CPU cores); test-heavy: the marked rest (GPU-target compiles of every
# launch configuration, torchrun fault runs); CI runs both
test: setup
	$(PY) -m pytest -q tests -m "not heavy" --durations=15 $(ARGS)

test-heavy: setup
	$(PY) -m pytest -q tests -m heavy --durations=10 $(ARGS)

bench: setup
	$(PY) -m pytest benchmarks --benchmark-only --benchmark-columns=min,median,mean,rounds \
		--benchmark-sort=name --benchmark-json=benchmarks/last.json $(ARGS)

quality: setup
	$(PY) benchmarks/quality_fmnist.py $(ARGS)

ablations: setup
	$(PY) benchmarks/ablations_fmnist.py $(ARGS)

clean:
	rm -rf build *.egg-info fastmoco/*.so .setup-stamp
