"""The report: JSON + HTML with an inline SVG timeline shading each fault window."""

from __future__ import annotations

import json
from pathlib import Path

from chaos import report
from chaos.checker import availability, check_queue
from tests.chaos.histories import H


def test_report_files_show_faults_and_verdict(tmp_path: Path) -> None:
    h = H().publish(["a"]).nemesis("start", 1, fault="kill-leader")
    h.publish(["b"], seq=1).nemesis("stop", 1, fault="kill-leader")
    h.ack(h.receive([("a", 1, 1000), ("b", 1, 1000)]))
    queue = check_queue(h.ops)
    result = {"valid": queue["valid"], "seed": 7, "anomaly_counts":
              {c: a["count"] for c, a in queue["anomalies"].items()},
              "availability": availability(h.ops), "queue": queue}
    report.write(tmp_path, result, h.ops)
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["seed"] == 7 and saved["valid"] is True
    page = (tmp_path / "report.html").read_text()
    assert "VALID" in page and "<svg" in page
    assert page.count('fill="#f4b0b0"') == 1  # one shaded fault window
    assert "kill-leader" in page
    assert "<polyline" in page


def test_timeline_counts_ok_ops_per_second() -> None:
    h = H().publish(["a"]).publish(["b"], seq=1)
    tl = report.timeline(h.ops)
    assert tl["ok_per_s"]["publish"] == {0: 2}
    assert set(tl["publish_latency_ms_max"]) == {0}


def test_campaign_summary_table_names_invalid_seeds(tmp_path: Path) -> None:
    from chaos.summary import load_reports, markdown

    for seed, valid in ((1, True), (2, False)):
        (tmp_path / f"seed-{seed}").mkdir()
        report_json = {"seed": seed, "nodes": 3, "workload": "queue", "valid": valid,
                       "schedule": [{"kind": "kill-one"}], "ops": 10, "duration_s": 60,
                       "anomaly_counts": {"lost": 0 if valid else 3},
                       "queue": {"stats": {"publish_acked": 5}},
                       "availability": {"recovery_s_max": 0.5}, "phases": {}}
        if seed == 2:  # a mixed run carries its transactions
            report_json["txn"] = {"stats": {"committed": 7}}
        (tmp_path / f"seed-{seed}" / "report.json").write_text(json.dumps(report_json))
    table = markdown(load_reports([tmp_path]))
    assert "| 1 | 3 | queue | kill-one | 10 | 5 | - | 0.5 | valid |" in table
    assert "| 2 | 3 | queue | kill-one | 10 | 5 | 7 | 0.5 | **INVALID**" in table
    assert "7 committed transactions" in table
    assert '**INVALID** {"lost": 3}' in table
    assert "invalid runs: [2]" in table


def test_node_logs_are_scanned_for_tracebacks(tmp_path: Path) -> None:
    from chaos.runner import scan_node_logs

    (tmp_path / "n1.log").write_text("level=INFO ok\n")
    (tmp_path / "n2.log").write_text(
        "level=ERROR pysyncobj failed _onTick\nTraceback (most recent call last):\n  x\n"
        "level=CRITICAL replication.journal durable_io_failed\n"
        "level=CRITICAL raftmq.node event=node_resync_restart node process re-executes\n")
    assert scan_node_logs(tmp_path) == {
        "n1": {"tracebacks": 0, "critical": 0, "errors": 0, "resyncs": 0},
        "n2": {"tracebacks": 1, "critical": 2, "errors": 1, "resyncs": 1}}
