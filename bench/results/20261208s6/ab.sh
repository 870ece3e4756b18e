#!/bin/bash
# usage: ab.sh ROUNDS WORKLOAD ARGS...  -> alternating event(main)/thread(worktree) runs
R=$1; shift
for i in $(seq 1 $R); do
  for v in event thread; do
    if [ $v = event ]; then D=/work/main; else D=/tmp/s6/wt-thread; fi
    out=$(cd $D && PYTHONPATH=$D nice -n -10 /work/main/.venv/bin/python -m raftmq.bench "$@" --json -q 2>/dev/null)
    echo "$out" | python3 -c "
import json,sys
d=json.load(sys.stdin)['results'][0]
l=d['latency_ms']
print('$v', d['label'], 'msg/s', d['msgs_per_s'], 'p50', l['p50'], 'p99', l['p99'], 'cpu_us/msg', round(d['node_cpu_s_per_msg']*1e6,1), 'other%', d.get('other_cpu_pct'))"
  done
done
