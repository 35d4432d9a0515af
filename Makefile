# The two commands the README promises, plus the pieces they are made of.
.PHONY: setup demo test bench

setup:
	bash scripts/setup.sh

demo: setup
	.venv/bin/cosma-qc demo $(ARGS)

test: setup
	.venv/bin/python -m pytest $(ARGS)

# The benchmark suite (bench/suite.py): ~8 CPU-minutes (10-20 min on 2 cores), ARGS=--quick for a few.
bench: setup
	.venv/bin/cosma-qc bench $(ARGS)
