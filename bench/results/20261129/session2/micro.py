"""Per-message CPU of the pieces this session changed, in-process (min of 5 repeats)."""
import sys, timeit, msgpack
from storage import validate
from storage.limits import DEFAULT_LIMITS as L
from storage.producers import pack_result
from replication.proposer import pack_command
from node.codec import _check_depth
tag = sys.argv[1]
N = 100
req = msgpack.packb({"messages": [{"body": b"x" * 256} for _ in range(N)]})
def best(fn, number=500):
    return min(timeit.repeat(fn, number=number, repeat=5)) / number / N * 1e6
def edge():
    body = msgpack.unpackb(req, raw=False, strict_map_key=True)
    _check_depth(body, 0, False)
    wire = getattr(validate, "publish_messages_wire", validate.publish_messages)
    return {"op": "queue.publish", "queue": "q", "messages": wire(body["messages"], L)}
cmd = edge()
packed = pack_command(cmd)
res = {"messages": [{"id": str(i), "duplicate": False} for i in range(7, 7 + N)], "duplicate": False}
print(f"{tag:6} edge(unpack+depth+validate) {best(edge):5.2f}  pack_cmd {best(lambda: pack_command(cmd)):5.2f}  "
      f"unpack_cmd(per node) {best(lambda: msgpack.unpackb(packed, raw=False, strict_map_key=False)):5.2f}  "
      f"apply_check(per node) {best(lambda: validate.publish_messages_checked(cmd['messages'], L)):5.2f}  "
      f"store_result(per node) {best(lambda: pack_result(res)):5.2f}  us/msg; entry bytes/msg {len(packed)/N:.0f}")
