"""Every limit of the broker, named, with its default (STYLE.md: put a limit on everything).

One `Limits` object is shared by the HTTP edge (validation before proposing) and the state
machine (re-checks inside `apply`). All replicas of one cluster must use the same values, since
some of them (queues_max, producer_seq_window, producer_idle_expiry_s, ...) change what `apply`
does.
"""

from __future__ import annotations

from dataclasses import dataclass

MIB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    # messages and requests
    body_bytes_max: int = 1 * MIB
    batch_messages_max: int = 1000
    request_bytes_max: int = 8 * MIB
    headers_max: int = 64
    header_key_bytes_max: int = 256
    header_value_bytes_max: int = 4096
    name_chars_max: int = 200
    string_field_chars_max: int = 1024  # group, dedup_id, correlation_id, reply_to
    receipts_max: int = 1000  # receipts per ack / nack / visibility request
    receipt_chars_max: int = 64
    # receive / long poll
    receive_max_messages: int = 1000
    wait_s_max: int = 20
    # queue configuration
    visibility_timeout_s_max: int = 43_200  # 12 h
    priority_max: int = 9
    max_receives_max: int = 1_000_000
    delay_s_max: int = 14 * 24 * 3600  # 14 days
    ttl_s_max: int = 365 * 24 * 3600
    dedup_window_s_max: int = 7 * 24 * 3600
    dedup_ids_max: int = 1_000_000  # per queue; past it the oldest ids leave the window early
    expires_s_max: int = 365 * 24 * 3600
    queue_length_max: int = 100_000_000
    queue_bytes_max: int = 1 << 40
    queues_max: int = 10_000
    # exactly-once producers
    producers_max: int = 100_000
    producer_seq_window: int = 1000
    producer_idle_expiry_s: int = 7 * 24 * 3600
    # push subscriptions (webhooks)
    push_url_chars_max: int = 2048
    push_in_flight_max: int = 1000
    # transactions
    txn_parts_max: int = 100  # ack + publish entries in one transaction
    # time: an entry stamped by a node whose clock runs ahead moves replicated time at most
    # this far past the leader's last tick (the leader's clock is the authority)
    clock_lead_ms_max: int = 2_000
    # node resources (enforced at the HTTP edge of each node, not by apply)
    memory_high_watermark_bytes: int = 2 << 30  # past this RSS, publishes get 429 overloaded
    requests_in_flight_max: int = 10_000  # concurrent HTTP requests per node
    long_polls_max: int = 10_000  # receives / reads waiting at once per node
    request_read_timeout_s: float = 30.0  # a request body must arrive within this


DEFAULT_LIMITS = Limits()
