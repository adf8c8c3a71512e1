# etcdd: `make run` starts one member on 127.0.0.1:2379, `make test` runs the whole suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

RUN_FLAGS := --name default --data-dir default.etcd \
	--listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
	--listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
	--initial-cluster default=http://127.0.0.1:2380

.PHONY: run test venv proto bench bench-watch bench-maint clean

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

# make bench: 3-member etcd 3.4 vs 3-member etcdd (issue 3's matrix, check perf --load=m),
# then the leader failover distribution; BENCH_ARGS / FAILOVER_ARGS replace either part.
BENCH_ARGS ?= --compare --members 3 --cells put:1,16,64,256/range:64/range-l:64 \
	--check-perf --load m
FAILOVER_ARGS ?= --compare --members 3 --trials 20

bench: $(STAMP)
	$(PY) -m ops.bench $(BENCH_ARGS); status=$$?; \
	$(PY) -m ops.failover $(FAILOVER_ARGS) && exit $$status

# make bench-watch: issue 4's watch fan-out and lease keep-alive benchmark, etcd vs etcdd.
bench-watch: $(STAMP)
	$(PY) -m ops.watch_bench --compare; status=$$?; \
	$(PY) -m ops.unread_watch_bench && exit $$status

# make bench-maint: issue 5's snapshot save/restore and defrag of 1 GB, etcdd vs etcd 3.4.
MAINT_ARGS ?= --size-mb 1024

bench-maint: $(STAMP)
	$(PY) -m ops.maint_bench $(MAINT_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info _trial_temp
