# The two commands a newcomer needs: `make run` and `make test`.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test unit integration lint bench chaos fuzz clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)           ## start a local 3-node cluster on 127.0.0.1 (Ctrl-C stops it)
	$(VENV)/bin/raftmq cluster up

test: $(STAMP)          ## the whole suite: unit, integration, short chaos tier
	$(PY) -m pytest

unit: $(STAMP)
	$(PY) -m pytest tests/unit

integration: $(STAMP)
	$(PY) -m pytest tests/integration

lint: $(STAMP)          ## ruff and mypy --strict
	$(VENV)/bin/ruff check storage replication node raftmq chaos tests
	$(VENV)/bin/mypy

bench: $(STAMP)         ## the standard benchmark set against a fresh local cluster
	$(VENV)/bin/raftmq bench --standard

chaos: $(STAMP)         ## a chaos campaign: 10 runs x 60 s, every fault kind, 3 and 5 nodes (root)
	$(PY) -m chaos campaign --runs 10 --duration 60 --alternate-nodes \
	    --faults kill,pause,partition,corrupt,power-loss,clock,clock-back,disk-full,network,membership \
	    --workload mixed --out chaos-results

fuzz: $(STAMP)          ## longer fuzzing: 2,000 examples per property and API route
	FUZZ_EXAMPLES=2000 $(PY) -m pytest tests/fuzz

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
