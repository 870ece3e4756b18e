#!/bin/bash
# ab2.sh TAG REPS VARIANT... : interleaved runs: latency, then publish b100 c16 (node CPU/msg)
TAG=$1; REPS=$2; shift 2
for i in $(seq 1 $REPS); do
  for v in "$@"; do
    OUT=/tmp/s2/lat/out/$TAG-$v; mkdir -p $OUT; cd /tmp
    for w in "latency -n 1500" "publish -b 100 -c 16 -n 100000"; do
      name=$(echo $w | cut -d' ' -f1)
      uptime > $OUT/${name}_$i.load
      PYTHONPATH=/tmp/s2/lat/$v nice -n -10 /work/main/.venv/bin/python -m raftmq.bench $w --json -q > $OUT/${name}_$i.json 2>$OUT/${name}_$i.err
      uptime >> $OUT/${name}_$i.load
    done
  done
done
echo done
