"""The broker state machine: pure, deterministic, no I/O, no clock, no randomness.

`BrokerState.apply(command, now_ms) -> result` is the only way state changes. Every replica
applies the same commands in the same order and reaches the same state and the same results.
"""
