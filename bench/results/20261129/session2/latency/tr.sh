#!/bin/bash
# tr.sh NAME [env...]: one traced latency run on the current tree
NAME=$1; shift; D=/tmp/s2/lat/tr-$NAME; rm -rf $D; mkdir -p $D; cd /tmp
uptime > $D/load
env "$@" RAFTMQ_TRACE_DIR=$D PYTHONPATH=/work/main/bench/results/20261129/session2/trace:${VARIANT:-/work/main} nice -n -10 /work/main/.venv/bin/python -m raftmq.bench latency -n ${N:-1000} --json -q > $D/bench.json
sleep 1.5; uptime >> $D/load
/work/main/.venv/bin/python /work/main/bench/results/20261129/session2/trace/analyse.py $D > $D/phases.txt
python3 -c "
import json;r=json.load(open('$D/bench.json'))['results'][0]; print('$NAME', r['msgs_per_s'], r['latency_ms'], round(r['node_cpu_s_per_msg']*1e6))" | tee $D/summary
