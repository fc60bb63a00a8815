# The two entry points of the README. Both run the (idempotent) set-up first.
PY := .venv/bin/python
DATA_ROOT ?= ../shared/data/kvasir_seg
PYTEST_ARGS ?=

.PHONY: setup demo test

setup:
	bash tools/setup_env.sh

demo: setup
	bash tools/demo.sh $(DATA_ROOT)

# pytest exits 5 when nothing was collected (e.g. -k matched nothing): not a failure.
test: setup
	$(PY) -m pytest $(PYTEST_ARGS) tests || [ $$? -eq 5 ]
