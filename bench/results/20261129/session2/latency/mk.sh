#!/bin/bash
# mk.sh NAME : snapshot the tree as it is now
NAME=$1; D=/tmp/s2/lat/$NAME; rm -rf $D; mkdir -p $D; cd /work/main
cp -r node replication storage raftmq $D/
find $D -name __pycache__ -prune -exec rm -rf {} +
