

def test_a_node_with_a_fast_clock_cannot_expire_leases_early() -> None:
    """Entries carry the proposer's clock; one stamped 10 minutes ahead (a follower with a
    fast clock) moves replicated time only clock_lead_ms_max past the leader's last tick."""
    from storage.state import BrokerState

    state = BrokerState()
    assert "created" in state.apply({"op": "queue.create", "queue": "q",
                                     "config": {"visibility_timeout_s": 30}}, 1_000)
    state.apply({"op": "queue.publish", "queue": "q", "messages": [{"body": b"x"}]}, 1_000)
    state.apply({"op": "tick"}, 2_000)
    got = state.apply({"op": "queue.receive", "queue": "q", "max_messages": 1,
                       "visibility_timeout_s": None, "ack": "manual"}, 2_000)
    assert len(got["messages"]) == 1
    skewed = state.apply({"op": "noop"}, 2_000 + 600_000)  # a fast follower's entry
    assert skewed == {} and state.now_ms == 2_000 + state.limits.clock_lead_ms_max
    info = state.queue_info("q", state.now_ms)
    assert info["stats"]["in_flight"] == 1, "the 30 s lease must not have expired"
    state.apply({"op": "tick"}, 40_000)  # the leader's clock does move time
    assert state.queue_info("q", state.now_ms)["stats"]["ready"] == 1
