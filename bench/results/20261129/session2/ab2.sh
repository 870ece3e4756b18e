#!/bin/bash
# ab.sh TAG REPS VARIANT... : interleaved runs
TAG=$1; REPS=$2; shift 2
for i in $(seq 1 $REPS); do
  for v in "$@"; do
    OUT=/tmp/s2/bench/$TAG-$v; mkdir -p $OUT; cd /tmp
    for w in "publish -b 100 -c 16" "receive -b 100 -c 8"; do
      name=$(echo $w | tr ' ' '_')
      uptime > $OUT/${name}_$i.load
      PYTHONPATH=/tmp/s2/$v nice -n -10 /work/main/.venv/bin/python -m raftmq.bench $w --json -q > $OUT/${name}_$i.json 2>$OUT/${name}_$i.err
      uptime >> $OUT/${name}_$i.load
    done
  done
done
echo done
