# etcdd: `make run` starts one member on 127.0.0.1:2379, `make test` runs the whole suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

RUN_FLAGS := --name default --data-dir default.etcd \
	--listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
	--listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
	--initial-cluster default=http://127.0.0.1:2380

.PHONY: run test venv proto bench clean

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	exec $(VENV)/bin/etcdd $(RUN_FLAGS)

test: $(STAMP)
	$(PY) -m pytest tests -q -p no:cacheprovider

proto: $(STAMP)
	$(PY) -m etcdd.proto.build

bench: $(STAMP)
	$(PY) -m ops.bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info _trial_temp
