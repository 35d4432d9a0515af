# The two commands the README promises, plus the pieces they are made of.
.PHONY: setup demo test

setup:
	bash scripts/setup.sh

demo: setup
	.venv/bin/cosma-qc demo $(ARGS)

test: setup
	.venv/bin/python -m pytest $(ARGS)
