#!/bin/bash
# mkvariant.sh NAME : snapshot the tree; base2 variant also reverts my files to 3ccaee6
NAME=$1; D=/tmp/s2/$NAME; rm -rf $D; mkdir -p $D; cd /work/main
cp -r node replication storage raftmq $D/
find $D -name __pycache__ -prune -exec rm -rf {} +
if [ "$2" = "revert" ]; then
  for f in replication/proposer.py storage/validate.py storage/state.py storage/topics.py storage/producers.py storage/queues.py node/http_queues.py node/http_topics.py node/codec.py; do
    git show 3ccaee6:$f > $D/$f
  done
fi
