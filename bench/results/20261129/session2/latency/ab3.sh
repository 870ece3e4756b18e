#!/bin/bash
# ab3.sh TAG REPS VARIANT... : interleaved: latency, publish b100 c16, publish b1 c64
TAG=$1; REPS=$2; shift 2
for i in $(seq 1 $REPS); do
  for v in "$@"; do
    OUT=/tmp/s2/lat/out/$TAG-$v; mkdir -p $OUT; cd /tmp
    for w in "latency -n 1500" "publish -b 100 -c 16 -n 100000" "publish -b 1 -c 64 -n 10000"; do
      name=$(echo $w | awk '{print $1 ($3=="" ? "" : "_b" $3)}')
      uptime > $OUT/${name}_$i.load
      PYTHONPATH=/tmp/s2/lat/$v nice -n -10 /work/main/.venv/bin/python -m raftmq.bench $w --json -q > $OUT/${name}_$i.json 2>$OUT/${name}_$i.err
      uptime >> $OUT/${name}_$i.load
    done
  done
done
echo done
