"""Queues at the state level: pure, deterministic, every command O(messages touched).

One `Queue` holds its messages in one dict (insertion order) and indexes them by state:

* ready: one `ReadyLevel` per priority level of (pos, msg_id) entries, popped in pos order; `pos`
  orders the queue's enqueues (the message id itself, the usual case: one int object for both;
  a message moved in from another queue gets a fresh number from the id counter, kept in
  `Queue.moved_pos`), so a redelivered message goes back to its place (FIFO by enqueue
  order within a priority). Entries are deleted lazily (a stale entry's message is gone or no
  longer READY), and every level's top is kept valid after each command, so reads can peek
  without mutating.
* in flight: message state INFLIGHT plus a lease heap (deadline_ms, msg_id, delivery).
* delayed: message state DELAYED plus a heap (ready_at_ms, msg_id).
* ttl: a heap (expires_at_ms, msg_id) of messages with a TTL.
* groups: per group name the active message (ready, in flight or delayed by a nack) and a FIFO
  of waiting messages (state WAITING): at most one message of a group is in flight.
* dedup: dedup_id -> (msg_id, expires_at_ms) plus a FIFO of (expires_at_ms, dedup_id); the window
  is fixed per queue, so expiry times are non-decreasing in that FIFO.

`Queues` holds every queue, the id counters and a timer heap (due_ms, queue) so timers fire in
O(due) per command. Messages that must leave a queue for its dead-letter queue are returned by the
`Queue` methods and routed by `Queues`.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from storage.answers import Deliveries, Delivery, PublishedIds, message_view
from storage.errors import BrokerError
from storage.limits import DEFAULT_LIMITS, Limits

READY, INFLIGHT, DELAYED, WAITING = 0, 1, 2, 3
PRIORITY_LEVELS = 10

REASON_MAX_RECEIVES = "max_receives"
REASON_TTL = "ttl_expired"
REASON_OVERFLOW = "overflow"

DEFAULT_QUEUE_CONFIG: dict[str, Any] = {
    "visibility_timeout_s": 30,
    "max_receives": 0,
    "dead_letter_queue": None,
    "message_ttl_s": 0,
    "max_length": 0,
    "max_bytes": 0,
    "overflow": "reject",
    "delay_s": 0,
    "dedup_window_s": 300,
    "expires_s": 0,
    "durability": "fsync",
}


# One shared empty header dict for the many messages without headers (64 bytes each saved).
# Never changed in place: results hand out a fresh {} instead, dead-lettering copies.
EMPTY_HEADERS: dict[str, str] = {}


def s_to_ms(seconds: float) -> int:
    """Durations in commands are seconds (int or float); inside the state they are integer ms."""
    return int(round(seconds * 1000))


class Msg:
    """One message in one queue.

    Memory is the broker's capacity (a million-message backlog), so: the rarely set fields
    `group`, `correlation_id` and `reply_to` are class attributes (None) here and slots only in
    `MsgWithMeta` (`Msg.new` picks); `due_ms` is the lease deadline while INFLIGHT and the
    ready time while DELAYED (every reader checks the state first)."""

    __slots__ = ("id", "body", "headers", "priority", "published_at", "receive_count",
                 "expires_at", "state", "delivery", "due_ms")
    group: str | None = None
    correlation_id: str | None = None
    reply_to: str | None = None

    def __init__(self, mid: int, body: bytes, headers: dict[str, str], priority: int,
                 published_at: int) -> None:
        self.id = mid
        self.body = body
        self.headers = headers
        self.priority = priority
        self.published_at = published_at
        self.receive_count = 0
        self.expires_at = 0  # 0 = never
        self.state = READY
        self.delivery = 0  # the current delivery number (receipt), 0 = none
        self.due_ms = 0

    @staticmethod
    def new(mid: int, body: bytes, headers: dict[str, str], priority: int, group: str | None,
            correlation_id: str | None, reply_to: str | None, published_at: int) -> Msg:
        if group is None and correlation_id is None and reply_to is None:
            return Msg(mid, body, headers, priority, published_at)
        return MsgWithMeta(mid, body, headers, priority, group, correlation_id, reply_to,
                           published_at)

    def tail(self) -> list[Any]:
        """The fields that usually hold their defaults (_DEFAULT_TAIL) in a snapshot."""
        return [self.group, self.correlation_id, self.reply_to, self.receive_count,
                self.expires_at, self.state, self.delivery, self.due_ms]

    @staticmethod
    def decode_record(f: list[Any], moved_pos: dict[int, int]) -> Msg:
        """A record of a snapshot from before MSG_FIELDS (a list per message): 6 items
        (defaults), 14, or 15 from before `due_ms` (lease_ms and ready_at_ms apart). A
        position other than the id goes to `moved_pos`."""
        assert len(f) in (6, 14, 15), "message record of the wrong length"
        group, correlation_id, reply_to = f[6:9] if len(f) > 6 else (None, None, None)
        m = Msg.new(f[0], f[1], f[2] or EMPTY_HEADERS, f[3], group, correlation_id, reply_to,
                    f[4])
        if f[5] != m.id:
            moved_pos[m.id] = f[5]
        if len(f) > 6:
            m.receive_count, m.expires_at, m.state, m.delivery = f[9:13]
            m.due_ms = f[14] if len(f) == 15 and m.state == DELAYED else f[13]
        return m


class MsgWithMeta(Msg):
    """A message with a group, a correlation id or a reply-to (set once, at publish)."""

    __slots__ = ("group", "correlation_id", "reply_to")

    def __init__(self, mid: int, body: bytes, headers: dict[str, str], priority: int,
                 group: str | None, correlation_id: str | None, reply_to: str | None,
                 published_at: int) -> None:
        super().__init__(mid, body, headers, priority, published_at)
        self.group = group
        self.correlation_id = correlation_id
        self.reply_to = reply_to


_DEFAULT_TAIL: list[Any] = [None, None, None, 0, 0, READY, 0, 0]
MSG_FIELDS = 7  # items per message in a snapshot's flat "messages" list


def encode_msgs(msgs: Iterable[Msg], moved_pos: dict[int, int]) -> list[Any]:
    """Every message as MSG_FIELDS items of one flat list: id, body, headers or None, priority,
    published_at or None (the previous message's), pos or None (the id), and None or the tail.

    No list, dict or int per message that decoding would throw away: a million of those,
    freed among the million messages that stay, left ~110 MiB of holes in a restarted node.
    """
    out: list[Any] = []
    published_at = None
    for m in msgs:
        tail = m.tail()
        out += (m.id, m.body, m.headers or None, m.priority,
                None if m.published_at == published_at else m.published_at,
                moved_pos.get(m.id), None if tail == _DEFAULT_TAIL else tail)
        published_at = m.published_at
    return out


def decode_msgs(flat: list[Any], moved_pos: dict[int, int]) -> Iterator[Msg]:
    """Inverse of encode_msgs; positions other than the id go to `moved_pos`."""
    published_at = 0
    it = iter(flat)
    for mid, body, headers, priority, published, pos, tail in zip(
            *[it] * MSG_FIELDS, strict=True):
        if published is not None:
            published_at = published
        group, correlation_id, reply_to = tail[:3] if tail else (None, None, None)
        m = Msg.new(mid, body, headers or EMPTY_HEADERS, priority, group, correlation_id,
                    reply_to, published_at)
        if pos is not None and pos != mid:
            moved_pos[mid] = pos
        if tail:
            m.receive_count, m.expires_at, m.state, m.delivery, m.due_ms = tail[3:]
        yield m


def _flat(entries: Sequence[tuple[int, ...]]) -> list[int]:
    """Heap entries as one flat list (much cheaper to pack and unpack than many tuples)."""
    return [x for e in entries for x in e]


def _pairs(flat: list[int]) -> list[tuple[int, int]]:
    it = iter(flat)
    return list(zip(it, it, strict=True))


def _triples(flat: list[int]) -> list[tuple[int, int, int]]:
    it = iter(flat)
    return list(zip(it, it, it, strict=True))


def receipt_of(msg: Msg) -> str:
    return f"{msg.id}.{msg.delivery}"


RECEIPT_CHARS_MAX = 64  # a receipt longer than this names nothing


def parse_receipt(receipt: Any) -> tuple[int, int] | None:
    """(message id, delivery no) of a receipt in its one canonical spelling, else None (stale).

    Only ASCII digits without leading zeros: str.isdigit() also accepts '¹', which int()
    refuses, and '01.1' must not name the same delivery as '1.1'."""
    if not isinstance(receipt, str) or len(receipt) > RECEIPT_CHARS_MAX or not receipt.isascii():
        return None
    mid, sep, delivery = receipt.partition(".")
    if not sep or not _canonical_number(mid) or not _canonical_number(delivery):
        return None
    return int(mid), int(delivery)


def _canonical_number(text: str) -> bool:
    return text.isdigit() and (text == "0" or not text.startswith("0"))


class ReadyLevel:
    """The ready (pos, msg_id) entries of one priority level, popped smallest pos first.

    A published message's pos is its id (Queue.enqueue) and arrives in increasing order: its
    entry is just the id in a FIFO (8 bytes, the int shared with the message) instead of a
    heap tuple (about 72 bytes: a million-message backlog's largest index). Any other entry
    (a nack, an expired lease, the end of a delay, its group's turn, a message moved in) goes
    to a heap. The next entry is the smaller of the two heads."""

    __slots__ = ("fifo", "heap")

    def __init__(self) -> None:
        self.fifo: deque[int] = deque()  # ids, each its own pos
        self.heap: list[tuple[int, int]] = []

    def __len__(self) -> int:
        return len(self.fifo) + len(self.heap)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        """Every entry (stale ones too), in no particular order."""
        yield from ((mid, mid) for mid in self.fifo)
        yield from self.heap

    def push(self, pos: int, mid: int) -> None:
        if pos == mid and (not self.fifo or mid > self.fifo[-1]):
            self.fifo.append(mid)
        else:
            heapq.heappush(self.heap, (pos, mid))

    def _head_in_fifo(self) -> bool:
        return bool(self.fifo) and (not self.heap or self.fifo[0] < self.heap[0][0])

    def top(self) -> tuple[int, int]:
        if self._head_in_fifo():
            return self.fifo[0], self.fifo[0]
        return self.heap[0]

    def pop(self) -> tuple[int, int]:
        if self._head_in_fifo():
            mid = self.fifo.popleft()
            return mid, mid
        return heapq.heappop(self.heap)

    def keep(self, valid: Callable[[tuple[int, int]], Msg | None]) -> None:
        """Drop the stale entries."""
        self.fifo = deque(mid for mid in self.fifo if valid((mid, mid)) is not None)
        self.heap = [e for e in self.heap if valid(e) is not None]
        heapq.heapify(self.heap)

    def encode(self) -> list[list[int]]:
        return [list(self.fifo), _flat(self.heap)]

    @classmethod
    def decode(cls, rec: list[Any], msgs: dict[int, Msg]) -> ReadyLevel:
        level = cls()
        if rec and isinstance(rec[0], list):
            fifo, heap = rec
        else:  # a snapshot from before ReadyLevel: one flat heap
            fifo, heap = [], rec
        for mid in fifo:
            msg = msgs.get(mid)  # share the message's int, as before the snapshot
            level.fifo.append(msg.id if msg is not None else mid)
        level.heap = _pairs(heap)
        heapq.heapify(level.heap)  # a no-op for a heap; a pre-ReadyLevel list was one
        return level


class Group:
    __slots__ = ("active", "waiting")

    def __init__(self) -> None:
        self.active: int | None = None
        self.waiting: deque[int] = deque()


Dead = list[tuple[Msg, str]]  # messages that left a queue for its dead-letter queue, with reason


class Queue:
    """One queue. Methods change only this queue; dead letters are returned to the caller."""

    # lazily deleted heap entries are filtered out once they outnumber live ones by this slack
    COMPACT_SLACK = 1024

    def __init__(self, name: str, config: dict[str, Any], now_ms: int) -> None:
        self.name = name
        self.config = config  # never changes after creation (create is idempotent)
        # A message's position is its id, except for one moved in (dead letter, redrive):
        # those few positions live here rather than in a slot of every message (16 B each).
        self.moved_pos: dict[int, int] = {}
        self.length_max = int(config["max_length"])  # 0 = unlimited
        self.bytes_max = int(config["max_bytes"])  # 0 = unlimited
        self.msgs: dict[int, Msg] = {}
        self.ready: list[ReadyLevel] = [ReadyLevel() for _ in range(PRIORITY_LEVELS)]
        self.leases: list[tuple[int, int, int]] = []
        self.delayed: list[tuple[int, int]] = []
        self.ttls: list[tuple[int, int]] = []
        self.groups: dict[str, Group] = {}
        self.dedup: dict[str, tuple[int, int]] = {}
        self.dedup_order: deque[tuple[int, str]] = deque()
        self.next_pos = 1
        self.ready_n = 0
        self.ready_bytes = 0
        self.inflight_n = 0
        self.delayed_n = 0
        self.waiting_n = 0
        self.total_bytes = 0
        self.published_total = 0
        self.acked_total = 0
        self.dead_lettered_total = 0
        self.dropped_total = 0
        self.expired_total = 0
        self.purged_total = 0
        self.delivered_total = 0
        self.nacked_total = 0
        self.moved_out_total = 0  # redriven to another queue
        self.dead_letter_dropped_total = 0  # dead letters lost: the dead-letter queue was full
        self.last_activity_ms = now_ms
        self.scheduled_ms: int | None = None  # the due time pushed on the store's timer heap

    # ----- config helpers
    @property
    def visibility_ms(self) -> int:
        return s_to_ms(self.config["visibility_timeout_s"])

    @property
    def max_receives(self) -> int:
        return int(self.config["max_receives"])

    def __len__(self) -> int:
        return len(self.msgs)

    # ----- capacity
    def room_needed(self, n: int, nbytes: int) -> bool:
        """Can n messages of nbytes in total be added (dropping oldest ready ones if allowed)?"""
        max_len, max_bytes = self.config["max_length"], self.config["max_bytes"]
        if self.config["overflow"] == "drop_oldest":
            fixed_n, fixed_b = len(self.msgs) - self.ready_n, self.total_bytes - self.ready_bytes
        else:
            fixed_n, fixed_b = len(self.msgs), self.total_bytes
        if max_len and fixed_n + n > max_len:
            return False
        return not (max_bytes and fixed_b + nbytes > max_bytes)

    def over_limit(self) -> bool:
        return bool((self.length_max and len(self.msgs) > self.length_max)
                    or (self.bytes_max and self.total_bytes > self.bytes_max))

    # ----- enqueue
    def enqueue(self, msg: Msg, delay_ms: int, ttl_ms: int, now_ms: int,
                fresh_pos: Callable[[], int]) -> list[Msg]:
        """Add a message (room checked by the caller); returns messages dropped by overflow.

        `fresh_pos()` hands out a number no message id will take (Queues takes it from the id
        counter): the position of an older message that moves in (dead letter, redrive) and
        goes to the back. Later ids are above it, so they stay their own positions."""
        assert msg.id not in self.msgs, "message id enqueued twice"
        if msg.id >= self.next_pos:  # ids arrive in order: the id is the position
            self.next_pos = msg.id + 1
        else:
            pos = fresh_pos()
            assert pos >= self.next_pos, "a fresh position below the queue's last one"
            self.moved_pos[msg.id] = pos
            self.next_pos = pos + 1
        msg.receive_count = 0
        msg.delivery = 0
        msg.expires_at = now_ms + ttl_ms if ttl_ms > 0 else 0
        self.msgs[msg.id] = msg
        self.total_bytes += len(msg.body)
        if msg.expires_at:
            heapq.heappush(self.ttls, (msg.expires_at, msg.id))
        if delay_ms > 0:
            self._set_delayed(msg, now_ms + delay_ms)
        else:
            self._offer(msg)
        dropped: list[Msg] = []
        while self.over_limit():
            assert self.config["overflow"] == "drop_oldest", "room not checked before enqueue"
            victim = self._pop_oldest_ready()
            assert victim is not None, "overflow with nothing droppable"
            self._remove(victim)
            self.dropped_total += 1
            dropped.append(victim)
        if dropped:
            self._clean_tops()
        return dropped

    def _offer(self, msg: Msg) -> None:
        """A message becomes available: ready, or waiting behind its group's active message."""
        if msg.group is None:
            self._push_ready(msg)
            return
        group = self.groups.get(msg.group)
        if group is None:
            group = self.groups[msg.group] = Group()
        if group.active is None:
            group.active = msg.id
            self._push_ready(msg)
        else:
            msg.state = WAITING
            group.waiting.append(msg.id)
            self.waiting_n += 1

    def _push_ready(self, msg: Msg) -> None:
        msg.state = READY
        mid, moved = msg.id, self.moved_pos  # pos_of, inlined: once per published message
        self.ready[msg.priority].push(moved.get(mid, mid) if moved else mid, mid)
        self.ready_n += 1
        self.ready_bytes += len(msg.body)

    def _set_delayed(self, msg: Msg, ready_at_ms: int) -> None:
        msg.state = DELAYED
        msg.due_ms = ready_at_ms
        heapq.heappush(self.delayed, (ready_at_ms, msg.id))
        self.delayed_n += 1

    # ----- removal
    def _unindex(self, msg: Msg) -> None:
        """Take a message out of its state's counters (heap entries go stale lazily)."""
        if msg.state == READY:
            self.ready_n -= 1
            self.ready_bytes -= len(msg.body)
        elif msg.state == INFLIGHT:
            self.inflight_n -= 1
        elif msg.state == DELAYED:
            self.delayed_n -= 1
        else:
            assert msg.state == WAITING
            self.waiting_n -= 1
        assert min(self.ready_n, self.inflight_n, self.delayed_n, self.waiting_n) >= 0

    def _remove(self, msg: Msg) -> None:
        """A message leaves the queue for good (ack, dead letter, drop, expiry, redrive)."""
        assert self.msgs.get(msg.id) is msg, "removing a message not in the queue"
        self._unindex(msg)
        del self.msgs[msg.id]
        if self.moved_pos:
            self.moved_pos.pop(msg.id, None)
        self.total_bytes -= len(msg.body)
        if msg.group is not None:
            self._leave_group(msg)

    def pos_of(self, mid: int) -> int:
        """The message's place in enqueue order (FIFO within a priority)."""
        moved = self.moved_pos
        return moved.get(mid, mid) if moved else mid

    def _leave_group(self, msg: Msg) -> None:
        assert msg.group is not None
        group = self.groups.get(msg.group)
        if group is None or group.active != msg.id:
            return  # a waiting (or not yet joined, delayed) message leaves: nothing to free
        group.active = None
        while group.waiting:
            nxt = self.msgs.get(group.waiting.popleft())
            if nxt is not None and nxt.state == WAITING and nxt.group == msg.group:
                self.waiting_n -= 1
                group.active = nxt.id
                self._push_ready(nxt)
                break
        if group.active is None:
            del self.groups[msg.group]

    # ----- ready levels
    def _valid_ready(self, entry: tuple[int, int]) -> Msg | None:
        msg = self.msgs.get(entry[1])
        if msg is None or msg.state != READY or self.pos_of(msg.id) != entry[0]:
            return None
        return msg

    def _clean_tops(self) -> None:
        """Keep every ready level's top valid, so reads can peek without mutating."""
        for level in self.ready:
            while level and self._valid_ready(level.top()) is None:
                level.pop()

    def _pop_ready(self) -> Msg | None:
        """The next message to deliver: highest priority first, then enqueue order."""
        for priority in range(PRIORITY_LEVELS - 1, -1, -1):
            level = self.ready[priority]
            while level:
                msg = self._valid_ready(level.pop())
                if msg is not None:
                    return msg
        return None

    def _pop_oldest_ready(self) -> Msg | None:
        """The ready message enqueued first, whatever its priority."""
        self._clean_tops()
        best = -1
        for priority in range(PRIORITY_LEVELS):
            level = self.ready[priority]
            if level and (best < 0 or level.top()[0] < self.ready[best].top()[0]):
                best = priority
        if best < 0:
            return None
        msg = self._valid_ready(self.ready[best].pop())
        assert msg is not None, "ready heap top was not clean"
        return msg

    # ----- consumers
    def receive(self, max_messages: int, visibility_ms: int, auto_ack: bool, now_ms: int,
                first_delivery: int) -> list[Delivery]:
        """Deliver up to max_messages; manual deliveries are numbered from first_delivery."""
        assert max_messages >= 1 and first_delivery >= 1
        self.last_activity_ms = now_ms
        if auto_ack:
            out = self._receive_auto(max_messages, now_ms)
        else:
            out = self._receive_manual(max_messages, now_ms + visibility_ms, first_delivery)
        self._clean_tops()
        assert len(out) <= max_messages
        return out

    def _take(self, msg: Msg) -> None:
        """A ready message (popped from its heap) goes out for delivery."""
        assert not self.max_receives or msg.receive_count < self.max_receives
        self.ready_n -= 1
        self.ready_bytes -= len(msg.body)
        msg.receive_count += 1
        msg.state = INFLIGHT
        self.inflight_n += 1
        self.delivered_total += 1

    def _receive_manual(self, max_messages: int, lease_ms: int,
                        delivery: int) -> list[Delivery]:
        """The hot path: a manual delivery adds nothing to the ready levels (a group's next
        message waits for the ack), so one pass from priority 9 down is exact."""
        out: list[Delivery] = []
        msgs, leases, moved = self.msgs, self.leases, self.moved_pos
        for priority in range(PRIORITY_LEVELS - 1, -1, -1):
            level = self.ready[priority]
            fifo, heap = level.fifo, level.heap
            while (fifo or heap) and len(out) < max_messages:
                # ReadyLevel.pop, inlined: through the method receive + ack costs 6 % more
                if fifo and (not heap or fifo[0] < heap[0][0]):
                    pos = mid = fifo.popleft()
                else:
                    pos, mid = heapq.heappop(heap)
                msg = msgs.get(mid)
                if (msg is None or msg.state != READY
                        or (moved.get(mid, mid) if moved else mid) != pos):
                    continue  # a lazily deleted entry
                self._take(msg)
                msg.delivery = delivery
                msg.due_ms = lease_ms
                heapq.heappush(leases, (lease_ms, mid, delivery))
                out.append((msg, msg.headers, msg.receive_count, delivery, lease_ms))
                delivery += 1
        return out

    def _receive_auto(self, max_messages: int, now_ms: int) -> list[Delivery]:
        """At-most-once: removed on delivery (a group's next message may become ready at once,
        possibly at a higher priority, so each pick starts again from the top)."""
        out: list[Delivery] = []
        while len(out) < max_messages:
            msg = self._pop_ready()
            if msg is None:
                break
            self._take(msg)
            out.append((msg, msg.headers, msg.receive_count, None, None))
            self._remove(msg)
            self.acked_total += 1
        return out

    def current(self, receipt: Any) -> Msg | None:
        """The in-flight message this receipt names, if it is still that message's delivery.

        Same answers as parse_receipt + lookup, at half the cost (an ack is one call per
        message on every node): the receipt must equal the message's receipt exactly, which
        is canonical by construction."""
        if not isinstance(receipt, str) or len(receipt) > RECEIPT_CHARS_MAX:
            return None
        mid, sep, _ = receipt.partition(".")
        if not sep or not mid.isascii() or not mid.isdigit():
            return None
        msg = self.msgs.get(int(mid))
        if msg is None or msg.state != INFLIGHT or receipt != f"{msg.id}.{msg.delivery}":
            return None
        return msg

    def ack(self, receipts: list[Any], now_ms: int) -> tuple[int, list[Any]]:
        self.last_activity_ms = now_ms
        acked, stale = 0, []
        for receipt in receipts:
            msg = self.current(receipt)
            if msg is None:
                stale.append(receipt)
                continue
            self._remove(msg)
            self.acked_total += 1
            acked += 1
        self._clean_tops()
        return acked, stale

    def nack(self, receipts: list[Any], delay_ms: int, now_ms: int) -> tuple[int, list[Any], Dead]:
        self.last_activity_ms = now_ms
        dead: Dead = []
        nacked, stale = 0, []
        for receipt in receipts:
            msg = self.current(receipt)
            if msg is None:
                stale.append(receipt)
                continue
            nacked += 1
            self.nacked_total += 1
            self._release(msg, delay_ms, now_ms, dead)
        self._clean_tops()
        return nacked, stale, dead

    def visibility(self, receipts: list[Any], timeout_ms: int,
                   now_ms: int) -> tuple[list[dict[str, Any]], list[Any], Dead]:
        self.last_activity_ms = now_ms
        dead: Dead = []
        updated: list[dict[str, Any]] = []
        stale: list[Any] = []
        for receipt in receipts:
            msg = self.current(receipt)
            if msg is None:
                stale.append(receipt)
                continue
            if timeout_ms <= 0:
                self._release(msg, 0, now_ms, dead)
                updated.append({"receipt": receipt, "lease_expires_at": now_ms})
                continue
            msg.due_ms = now_ms + timeout_ms
            heapq.heappush(self.leases, (msg.due_ms, msg.id, msg.delivery))
            updated.append({"receipt": receipt, "lease_expires_at": msg.due_ms})
        self._clean_tops()
        return updated, stale, dead

    def _release(self, msg: Msg, delay_ms: int, now_ms: int, dead: Dead) -> None:
        """An in-flight message comes back (nack, lease expiry, visibility 0)."""
        assert msg.state == INFLIGHT
        msg.delivery = 0  # any receipt of it is now stale
        if msg.expires_at and msg.expires_at <= now_ms:
            self._expire(msg, dead)
            return
        if self.max_receives and msg.receive_count >= self.max_receives:
            self._dead_letter(msg, REASON_MAX_RECEIVES, dead)
            return
        self.inflight_n -= 1
        if delay_ms > 0:
            self._set_delayed(msg, now_ms + delay_ms)
        else:
            self._push_ready(msg)

    def _dead_letter(self, msg: Msg, reason: str, dead: Dead) -> None:
        self._remove(msg)
        self.dead_lettered_total += 1
        dead.append((msg, reason))

    def _expire(self, msg: Msg, dead: Dead) -> None:
        self.expired_total += 1
        self._dead_letter(msg, REASON_TTL, dead)

    def purge(self) -> int:
        """Remove every message (in-flight ones too: their receipts become stale)."""
        n = len(self.msgs)
        self.purged_total += n
        self.msgs.clear()
        self.moved_pos.clear()
        self.ready = [ReadyLevel() for _ in range(PRIORITY_LEVELS)]
        self.leases, self.delayed, self.ttls = [], [], []
        self.groups.clear()
        self.ready_n = self.ready_bytes = self.inflight_n = self.delayed_n = 0
        self.waiting_n = self.total_bytes = 0
        return n

    def peek_ready(self) -> Msg | None:
        """The message _pop_ready would return, without changing anything."""
        for priority in range(PRIORITY_LEVELS - 1, -1, -1):
            level = self.ready[priority]
            if level:
                msg = self._valid_ready(level.top())
                assert msg is not None, "ready level top was not clean"
                return msg
        return None

    def take_next_ready(self) -> Msg | None:
        """Remove the next ready message in delivery order (for redrive)."""
        msg = self._pop_ready()
        if msg is not None:
            self._remove(msg)
            self.moved_out_total += 1
        self._clean_tops()
        return msg

    # ----- dedup
    def dedup_lookup(self, dedup_id: str, now_ms: int) -> int | None:
        entry = self.dedup.get(dedup_id)
        if entry is None or entry[1] <= now_ms:
            return None
        return entry[0]

    def dedup_remember(self, dedup_id: str, mid: int, now_ms: int, ids_max: int) -> None:
        """Remember a dedup id for the queue's window; at ids_max the oldest are forgotten."""
        window_ms = s_to_ms(self.config["dedup_window_s"])
        if window_ms <= 0:
            return
        expires = now_ms + window_ms
        assert not self.dedup_order or self.dedup_order[-1][0] <= expires
        self.dedup[dedup_id] = (mid, expires)
        self.dedup_order.append((expires, dedup_id))
        while len(self.dedup) > ids_max:
            old_expires, old_id = self.dedup_order.popleft()
            entry = self.dedup.get(old_id)
            if entry is not None and entry[1] == old_expires:
                del self.dedup[old_id]

    # ----- timers
    def next_due(self) -> int | None:
        """The earliest time something may change on its own (entries may be stale: early)."""
        dues = [h[0][0] for h in (self.leases, self.delayed, self.ttls) if h]
        if self.dedup_order:
            dues.append(self.dedup_order[0][0])
        if self.config["expires_s"]:
            dues.append(self.last_activity_ms + s_to_ms(self.config["expires_s"]))
        return min(dues) if dues else None

    def is_expired(self, now_ms: int) -> bool:
        expires_ms = s_to_ms(self.config["expires_s"])
        return bool(expires_ms) and self.last_activity_ms + expires_ms <= now_ms

    def fire(self, now_ms: int) -> Dead:
        """Fire every timer due at now_ms: delays, leases, TTLs, dedup expiry."""
        dead: Dead = []
        self._fire_delays(now_ms, dead)
        self._fire_leases(now_ms, dead)
        self._fire_ttls(now_ms, dead)
        while self.dedup_order and self.dedup_order[0][0] <= now_ms:
            expires, dedup_id = self.dedup_order.popleft()
            entry = self.dedup.get(dedup_id)
            if entry is not None and entry[1] == expires:
                del self.dedup[dedup_id]
        self._clean_tops()
        return dead

    def _fire_delays(self, now_ms: int, dead: Dead) -> None:
        while self.delayed and self.delayed[0][0] <= now_ms:
            ready_at, mid = heapq.heappop(self.delayed)
            msg = self.msgs.get(mid)
            if msg is None or msg.state != DELAYED or msg.due_ms != ready_at:
                continue
            self.delayed_n -= 1
            group = self.groups.get(msg.group) if msg.group is not None else None
            if group is not None and group.active == msg.id:
                self._push_ready(msg)  # a nacked group head: its group stays blocked till now
            else:
                self._offer(msg)

    def _fire_leases(self, now_ms: int, dead: Dead) -> None:
        while self.leases and self.leases[0][0] <= now_ms:
            lease_ms, mid, delivery = heapq.heappop(self.leases)
            msg = self.msgs.get(mid)
            if msg is None or msg.state != INFLIGHT or msg.delivery != delivery \
                    or msg.due_ms != lease_ms:
                continue
            self._release(msg, 0, now_ms, dead)

    def _fire_ttls(self, now_ms: int, dead: Dead) -> None:
        while self.ttls and self.ttls[0][0] <= now_ms:
            expires, mid = heapq.heappop(self.ttls)
            msg = self.msgs.get(mid)
            if msg is None or msg.expires_at != expires:
                continue
            if msg.state == INFLIGHT:
                continue  # a leased message expires when it comes back (see _release)
            self._expire(msg, dead)

    # ----- heap hygiene
    def compact(self) -> None:
        """Drop stale heap entries once they dominate (amortized O(1) per entry).

        Acked messages leave lease and TTL entries behind until their due time, which with a
        long TTL would grow without bound; filtering when a heap is mostly stale bounds each
        heap to about twice its live entries.
        """
        slack = self.COMPACT_SLACK
        if len(self.leases) > 2 * self.inflight_n + slack:
            self.leases = self._filtered(self.leases, self._valid_lease)
        if len(self.ttls) > 2 * len(self.msgs) + slack:
            self.ttls = self._filtered(self.ttls, self._valid_ttl)
        if len(self.delayed) > 2 * self.delayed_n + slack:
            self.delayed = self._filtered(self.delayed, self._valid_delay)
        if sum(len(level) for level in self.ready) > 2 * self.ready_n + slack:
            for level in self.ready:
                level.keep(self._valid_ready)
        assert len(self.leases) >= self.inflight_n and len(self.delayed) >= self.delayed_n

    @staticmethod
    def _filtered(heap: list[Any], valid: Callable[[Any], Msg | None]) -> list[Any]:
        kept = [e for e in heap if valid(e) is not None]
        heapq.heapify(kept)
        return kept

    def _valid_lease(self, e: tuple[int, int, int]) -> Msg | None:
        msg = self.msgs.get(e[1])
        ok = msg is not None and msg.state == INFLIGHT and msg.delivery == e[2] \
            and msg.due_ms == e[0]
        return msg if ok else None

    def _valid_ttl(self, e: tuple[int, int]) -> Msg | None:
        msg = self.msgs.get(e[1])
        return msg if msg is not None and msg.expires_at == e[0] else None

    def _valid_delay(self, e: tuple[int, int]) -> Msg | None:
        msg = self.msgs.get(e[1])
        return msg if msg is not None and msg.state == DELAYED and msg.due_ms == e[0] \
            else None

    # ----- reads
    def peek(self, max_messages: int) -> list[dict[str, Any]]:
        """Up to max_messages ready messages in delivery order, changing nothing.

        O(level size) at worst (a sorted view of each priority level), for consoles and DLQ
        inspection; never on a hot path.
        """
        out: list[dict[str, Any]] = []
        for priority in range(PRIORITY_LEVELS - 1, -1, -1):
            for entry in sorted(self.ready[priority]):
                if len(out) >= max_messages:
                    return out
                msg = self._valid_ready(entry)
                if msg is not None:
                    out.append(self.view(msg))
        return out

    @staticmethod
    def view(msg: Msg) -> dict[str, Any]:
        return message_view(msg, msg.headers, msg.receive_count)

    def group_states(self, max_groups: int) -> list[dict[str, Any]]:
        """The first max_groups groups: which are busy (one in flight) or blocked (waiting)."""
        out: list[dict[str, Any]] = []
        for name, g in self.groups.items():
            if len(out) >= max_groups:
                break
            assert g.active is not None
            active = self.msgs[g.active]
            state = {INFLIGHT: "busy", DELAYED: "delayed"}.get(active.state, "ready")
            out.append({"group": name, "state": state, "waiting": len(g.waiting)})
        return out

    def deliverable_count(self) -> int:
        return self.ready_n

    def oldest_ready_age_s(self, now_ms: int) -> float:
        oldest: int | None = None
        for level in self.ready:
            if level:
                msg = self.msgs[level.top()[1]]
                if oldest is None or msg.published_at < oldest:
                    oldest = msg.published_at
        return 0.0 if oldest is None else max(0, now_ms - oldest) / 1000.0

    def stats(self, now_ms: int) -> dict[str, Any]:
        busy = sum(1 for g in self.groups.values()
                   if g.active is not None and self.msgs[g.active].state == INFLIGHT)
        return {
            "ready": self.ready_n + self.waiting_n,
            "in_flight": self.inflight_n,
            "delayed": self.delayed_n,
            "published_total": self.published_total,
            "acked_total": self.acked_total,
            "dead_lettered_total": self.dead_lettered_total,
            "dropped_total": self.dropped_total,
            "expired_total": self.expired_total,
            "purged_total": self.purged_total,
            "delivered_total": self.delivered_total,
            "nacked_total": self.nacked_total,
            "dead_letter_dropped_total": self.dead_letter_dropped_total,
            "oldest_ready_age_s": self.oldest_ready_age_s(now_ms),
            "bytes": self.total_bytes,
            "groups": len(self.groups),
            "groups_busy": busy,
            "groups_blocked": sum(1 for g in self.groups.values() if g.waiting),
        }

    def info(self, now_ms: int) -> dict[str, Any]:
        return {"name": self.name, "config": dict(self.config), "stats": self.stats(now_ms)}

    # ----- snapshot
    def encode(self) -> dict[str, Any]:
        return {
            "name": self.name, "config": self.config,
            "messages": encode_msgs(self.msgs.values(), self.moved_pos),
            "ready": [level.encode() for level in self.ready], "leases": _flat(self.leases),
            "delayed": _flat(self.delayed), "ttls": _flat(self.ttls),
            "groups": [[k, g.active, list(g.waiting)] for k, g in self.groups.items()],
            "dedup": [[k, v[0], v[1]] for k, v in self.dedup.items()],
            "dedup_order": [list(e) for e in self.dedup_order],
            "counters": [self.next_pos, self.ready_n, self.ready_bytes, self.inflight_n,
                         self.delayed_n, self.waiting_n, self.total_bytes,
                         self.published_total, self.acked_total, self.dead_lettered_total,
                         self.dropped_total, self.expired_total, self.purged_total,
                         self.delivered_total, self.nacked_total, self.moved_out_total,
                         self.dead_letter_dropped_total, self.last_activity_ms,
                         self.scheduled_ms],
        }

    @classmethod
    def decode(cls, d: dict[str, Any]) -> Queue:
        q = cls(d["name"], d["config"], 0)
        if "messages" in d:
            for m in decode_msgs(d["messages"], q.moved_pos):
                q.msgs[m.id] = m
        else:  # a snapshot from before MSG_FIELDS
            for rec in d["msgs"]:
                m = Msg.decode_record(rec, q.moved_pos)
                q.msgs[m.id] = m
        q.ready = [ReadyLevel.decode(rec, q.msgs) for rec in d["ready"]]
        assert len(q.ready) == PRIORITY_LEVELS
        q.leases = _triples(d["leases"])
        q.delayed = _pairs(d["delayed"])
        q.ttls = _pairs(d["ttls"])
        for name, active, waiting in d["groups"]:
            g = q.groups[name] = Group()
            g.active = active
            g.waiting = deque(waiting)
        q.dedup = {k: (mid, exp) for k, mid, exp in d["dedup"]}
        q.dedup_order = deque((e[0], e[1]) for e in d["dedup_order"])
        (q.next_pos, q.ready_n, q.ready_bytes, q.inflight_n, q.delayed_n, q.waiting_n,
         q.total_bytes, q.published_total, q.acked_total, q.dead_lettered_total,
         q.dropped_total, q.expired_total, q.purged_total, q.delivered_total,
         q.nacked_total, q.moved_out_total,
         q.dead_letter_dropped_total, q.last_activity_ms, q.scheduled_ms) = d["counters"]
        return q


class Queues:
    """Every queue, the id counters, and the timer heap that fires queue timers in O(due)."""

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self.limits = limits
        self.queues: dict[str, Queue] = {}
        self.next_msg_id = 1
        self.next_delivery = 1
        self.timers: list[tuple[int, str]] = []
        self.on_delete: Callable[[str], None] | None = None

    def get(self, name: str) -> Queue:
        q = self.queues.get(name)
        if q is None:
            raise BrokerError("queue_not_found", f"queue: {name!r} does not exist")
        return q

    # ----- timers
    def reschedule(self, q: Queue) -> None:
        """After any change to q: compact its heaps and make sure its next timer is queued."""
        q.compact()
        due = q.next_due()
        if due is None:
            return
        if q.scheduled_ms is None or due < q.scheduled_ms:
            heapq.heappush(self.timers, (due, q.name))
            q.scheduled_ms = due

    def fire(self, now_ms: int) -> None:
        """Fire every queue timer due at now_ms."""
        while self.timers and self.timers[0][0] <= now_ms:
            due, name = heapq.heappop(self.timers)
            q = self.queues.get(name)
            if q is None or q.scheduled_ms != due:
                continue
            q.scheduled_ms = None
            if q.is_expired(now_ms):
                self.delete(name)
                continue
            self.route_dead(q, q.fire(now_ms), now_ms)
            self.reschedule(q)
            assert q.scheduled_ms is None or q.scheduled_ms > now_ms, "timer did not advance"

    # ----- lifecycle
    def create(self, name: str, config: dict[str, Any], now_ms: int) -> dict[str, Any]:
        existing = self.queues.get(name)
        if existing is not None:
            if existing.config != config:
                raise BrokerError("already_exists",
                                  f"queue: {name!r} exists with another config")
            return {"queue": {"name": name, **existing.config}, "created": False}
        dlq = config.get("dead_letter_queue")
        need = 1 + (1 if dlq is not None and dlq not in self.queues else 0)
        if len(self.queues) + need > self.limits.queues_max:
            raise BrokerError("overloaded", f"queue: queues_max ({self.limits.queues_max}) "
                                            "reached; delete a queue first")
        if dlq is not None and dlq not in self.queues:
            self._add(dlq, dict(DEFAULT_QUEUE_CONFIG), now_ms)
        self._add(name, config, now_ms)
        return {"queue": {"name": name, **config}, "created": True}

    def _add(self, name: str, config: dict[str, Any], now_ms: int) -> Queue:
        assert name not in self.queues
        q = self.queues[name] = Queue(name, config, now_ms)
        self.reschedule(q)
        return q

    def delete(self, name: str) -> dict[str, Any]:
        self.get(name)
        del self.queues[name]
        if self.on_delete is not None:
            self.on_delete(name)
        return {"deleted": True}

    # ----- publish
    def plan(self, name: str, messages: list[dict[str, Any]],
             now_ms: int) -> tuple[Queue, list[int | None]]:
        """Check that a batch can be published; for each message its dedup original id or None.

        Changes nothing. Raises queue_not_found / queue_full.
        """
        q = self.get(name)
        originals: list[int | None] = []
        seen: dict[str, int] = {}
        n = nbytes = 0
        for i, m in enumerate(messages):
            dedup_id = m.get("dedup_id")
            original = None
            if dedup_id is not None:
                original = q.dedup_lookup(dedup_id, now_ms)
                if original is None and dedup_id in seen:
                    original = -1 - seen[dedup_id]  # refers to message i of this batch
                seen.setdefault(dedup_id, i)
            originals.append(original)
            if original is None:
                n += 1
                nbytes += len(m["body"])
        if not q.room_needed(n, nbytes):
            raise BrokerError("queue_full", f"queue: {name!r} is full (max_length "
                                            f"{q.config['max_length']}, max_bytes "
                                            f"{q.config['max_bytes']}, overflow reject)")
        return q, originals

    def fresh_pos(self) -> int:
        """A queue position no message id takes: the next id, skipped (Queue.enqueue)."""
        pos = self.next_msg_id
        self.next_msg_id += 1
        return pos

    def publish(self, name: str, messages: list[dict[str, Any]],
                now_ms: int) -> dict[str, Any]:
        q, originals = self.plan(name, messages, now_ms)
        return self.commit(q, messages, originals, now_ms)

    def commit(self, q: Queue, messages: list[dict[str, Any]], originals: list[int | None],
               now_ms: int) -> dict[str, Any]:
        """Publish a planned batch: cannot fail."""
        ids: list[int] = []
        dups: list[bool] | None = None  # built at the first duplicate
        dropped: list[Msg] = []
        default_delay_ms = s_to_ms(q.config["delay_s"])
        default_ttl_ms = s_to_ms(q.config["message_ttl_s"])
        for m, original in zip(messages, originals, strict=True):
            if original is not None:
                mid = ids[-1 - original] if original < 0 else original
                if dups is None:
                    dups = [False] * len(ids)
                ids.append(mid)
                dups.append(True)
                continue
            mid = self.next_msg_id
            self.next_msg_id += 1
            ids.append(mid)
            if dups is not None:
                dups.append(False)
            get = m.get
            # headers are shared with the command, never changed in place (dead-lettering copies)
            msg = Msg.new(mid, m["body"], get("headers") or EMPTY_HEADERS, get("priority") or 0,
                          get("group"), get("correlation_id"), get("reply_to"), now_ms)
            delay_s, ttl_s = get("delay_s"), get("ttl_s")
            gone = q.enqueue(msg, s_to_ms(delay_s) if delay_s else default_delay_ms,
                             s_to_ms(ttl_s) if ttl_s else default_ttl_ms, now_ms,
                             self.fresh_pos)
            if gone:
                dropped.extend(gone)
            q.published_total += 1
            dedup_id = get("dedup_id")
            if dedup_id is not None:
                q.dedup_remember(dedup_id, mid, now_ms, self.limits.dedup_ids_max)
        self.route_dead(q, [(d, REASON_OVERFLOW) for d in dropped], now_ms)
        self.reschedule(q)
        return {"messages": PublishedIds(ids, dups), "duplicate": False}

    # ----- dead letters
    def route_dead(self, q: Queue, dead: Dead, now_ms: int) -> None:
        """Send messages that left q to its dead-letter queue (created if missing), or drop them.

        A dead-letter queue that is full (overflow reject) drops the message; one that drops its
        oldest does not dead-letter those again (no cascades, no cycles).
        """
        dlq_name = q.config["dead_letter_queue"]
        if not dead or dlq_name is None:
            return
        dlq = self.queues.get(dlq_name)
        if dlq is None:
            if len(self.queues) >= self.limits.queues_max:
                q.dead_letter_dropped_total += len(dead)  # no room to re-create it
                return
            dlq = self._add(dlq_name, dict(DEFAULT_QUEUE_CONFIG), now_ms)
        for msg, reason in dead:
            if not dlq.room_needed(1, len(msg.body)):
                q.dead_letter_dropped_total += 1
                continue
            headers = dict(msg.headers)
            headers["x-dead-letter-reason"] = reason
            headers["x-original-queue"] = q.name
            headers["x-receive-count"] = str(msg.receive_count)
            msg.headers = headers
            ttl_ms = s_to_ms(dlq.config["message_ttl_s"])
            dlq.enqueue(msg, 0, ttl_ms, now_ms, self.fresh_pos)
            dlq.published_total += 1
        self.reschedule(dlq)

    # ----- consumers
    def receive(self, name: str, max_messages: int, visibility_s: float | None, auto_ack: bool,
                now_ms: int) -> dict[str, Any]:
        q = self.get(name)
        vis_ms = q.visibility_ms if visibility_s is None else s_to_ms(visibility_s)
        out = q.receive(max_messages, vis_ms, auto_ack, now_ms, self.next_delivery)
        if not auto_ack:
            self.next_delivery += len(out)
        self.reschedule(q)
        return {"messages": Deliveries(out)}

    def ack(self, name: str, receipts: list[Any], now_ms: int) -> dict[str, Any]:
        q = self.get(name)
        acked, stale = q.ack(receipts, now_ms)
        self.reschedule(q)
        return {"acked": acked, "stale": stale}

    def nack(self, name: str, receipts: list[Any], delay_s: float,
             now_ms: int) -> dict[str, Any]:
        q = self.get(name)
        nacked, stale, dead = q.nack(receipts, s_to_ms(delay_s), now_ms)
        self.route_dead(q, dead, now_ms)
        self.reschedule(q)
        return {"nacked": nacked, "stale": stale}

    def visibility(self, name: str, receipts: list[Any], timeout_s: float,
                   now_ms: int) -> dict[str, Any]:
        q = self.get(name)
        updated, stale, dead = q.visibility(receipts, s_to_ms(timeout_s), now_ms)
        self.route_dead(q, dead, now_ms)
        self.reschedule(q)
        return {"updated": updated, "stale": stale}

    def purge(self, name: str) -> dict[str, Any]:
        return {"purged": self.get(name).purge()}

    def redrive(self, name: str, to: str, max_messages: int, now_ms: int) -> dict[str, Any]:
        """Move up to max_messages ready messages from name to to (stopping when to is full)."""
        src, dst = self.get(name), self.get(to)
        if src is dst:
            raise BrokerError("invalid_request", "to: must name another queue")
        moved = 0
        while moved < max_messages:
            nxt = src.peek_ready()
            if nxt is None or not dst.room_needed(1, len(nxt.body)):
                break
            msg = src.take_next_ready()
            assert msg is nxt
            ttl_ms = s_to_ms(dst.config["message_ttl_s"])
            dropped = dst.enqueue(msg, 0, ttl_ms, now_ms, self.fresh_pos)
            dst.published_total += 1
            self.route_dead(dst, [(d, REASON_OVERFLOW) for d in dropped], now_ms)
            moved += 1
        self.reschedule(src)
        self.reschedule(dst)
        return {"moved": moved}

    # ----- reads
    def ready_count(self, name: str, now_ms: int) -> int:
        q = self.queues.get(name)
        if q is None:
            return 0
        due = q.next_due()
        return q.deliverable_count() + (1 if due is not None and due <= now_ms else 0)

    def depths(self) -> dict[str, dict[str, int]]:
        return {name: {"ready": q.ready_n + q.waiting_n, "in_flight": q.inflight_n,
                       "delayed": q.delayed_n}
                for name, q in self.queues.items()}

    # ----- snapshot
    def encode(self) -> dict[str, Any]:
        return {
            "queues": [q.encode() for q in self.queues.values()],
            "next_msg_id": self.next_msg_id, "next_delivery": self.next_delivery,
            "timers": self.timers,
        }

    @classmethod
    def decode(cls, d: dict[str, Any], limits: Limits = DEFAULT_LIMITS) -> Queues:
        qs = cls(limits)
        for qd in d["queues"]:
            q = Queue.decode(qd)
            qs.queues[q.name] = q
        # Older snapshots: a message moved in took its queue's next position, not a number
        # from the id counter, so a queue's next position may be above the next id. Ids go
        # on from above it, as fresh_pos needs (a position no id takes, above the queue's).
        qs.next_msg_id = max([d["next_msg_id"], *(q.next_pos for q in qs.queues.values())])
        qs.next_delivery = d["next_delivery"]
        qs.timers = [(e[0], e[1]) for e in d["timers"]]
        return qs
