"""report.json and report.html (an inline-SVG timeline: throughput, latency, fault windows)."""

from __future__ import annotations

import html
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from chaos.checker import fault_windows
from chaos.history import OK, Op, pairs

WIDTH_PX = 960
PANEL_PX = 160
MARGIN_PX = 40
BUCKET_S = 1.0


def write(out: Path, result: dict[str, Any], ops: list[Op]) -> None:
    (out / "report.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (out / "report.html").write_text(render_html(result, ops))


def timeline(ops: list[Op]) -> dict[str, Any]:
    """Per-second ok ops (by f) and per-second publish latency (median and max, ms)."""
    ok_per_s: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    latency: dict[int, list[float]] = defaultdict(list)
    for inv, comp in pairs(ops):
        if comp is None:
            continue
        second = int(comp["time_ns"] / 1e9 / BUCKET_S)
        if comp["type"] == OK:
            ok_per_s[inv["f"]][second] += 1
        if inv["f"] == "publish":
            latency[second].append((comp["time_ns"] - inv["time_ns"]) / 1e6)
    end_s = int(ops[-1]["time_ns"] / 1e9) + 1 if ops else 1
    lat_med = {s: sorted(v)[len(v) // 2] for s, v in latency.items()}
    lat_max = {s: max(v) for s, v in latency.items()}
    return {"end_s": end_s, "ok_per_s": {f: dict(v) for f, v in ok_per_s.items()},
            "publish_latency_ms_median": lat_med, "publish_latency_ms_max": lat_max}


def _polyline(series: dict[int, float], end_s: int, top: float, y0: int, color: str) -> str:
    if not series:
        return ""
    points = []
    for s in range(end_s + 1):
        v = series.get(s, 0.0)
        x = MARGIN_PX + s * (WIDTH_PX - 2 * MARGIN_PX) / max(end_s, 1)
        y = y0 + PANEL_PX - (v / top if top else 0) * PANEL_PX
        points.append(f"{x:.1f},{y:.1f}")
    return (f'<polyline fill="none" stroke="{color}" stroke-width="1.5" '
            f'points="{" ".join(points)}"/>')


def svg(ops: list[Op]) -> str:
    tl = timeline(ops)
    end_s = tl["end_s"]
    height = 2 * PANEL_PX + 3 * MARGIN_PX
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH_PX}" height="{height}" '
             'font-family="sans-serif" font-size="11">']
    scale = (WIDTH_PX - 2 * MARGIN_PX) / max(end_s, 1)
    for w in fault_windows(ops):
        x = MARGIN_PX + w["start_ns"] / 1e9 * scale
        width = max(1.0, (w["stop_ns"] - w["start_ns"]) / 1e9 * scale)
        label = html.escape(f"{w['fault']} {w.get('targets') or ''}")
        parts.append(f'<rect x="{x:.1f}" y="{MARGIN_PX}" width="{width:.1f}" '
                     f'height="{2 * PANEL_PX + MARGIN_PX}" fill="#f4b0b0" opacity="0.45">'
                     f'<title>{label}</title></rect>')
        parts.append(f'<text x="{x + 2:.1f}" y="{MARGIN_PX - 4}">{html.escape(w["fault"])}'
                     '</text>')
    colors = {"publish": "#1f77b4", "receive": "#2ca02c", "ack": "#9467bd", "nack": "#ff7f0e"}
    ok = tl["ok_per_s"]
    top = max((max(v.values()) for v in ok.values() if v), default=1)
    y0 = MARGIN_PX
    for f, series in sorted(ok.items()):
        parts.append(_polyline({k: float(v) for k, v in series.items()}, end_s, top, y0,
                               colors.get(f, "#555")))
    parts.append(f'<text x="4" y="{y0 + 12}">ok ops/s (max {top}): '
                 + " ".join(f'<tspan fill="{colors.get(f, "#555")}">{f}</tspan>' for f in ok)
                 + "</text>")
    y1 = y0 + PANEL_PX + MARGIN_PX
    lat_max = tl["publish_latency_ms_max"]
    top_lat = max(lat_max.values(), default=1.0)
    parts.append(_polyline(lat_max, end_s, top_lat, y1, "#d62728"))
    parts.append(_polyline(tl["publish_latency_ms_median"], end_s, top_lat, y1, "#1f77b4"))
    parts.append(f'<text x="4" y="{y1 + 12}">publish latency ms (max {top_lat:.0f}): '
                 '<tspan fill="#d62728">max</tspan> <tspan fill="#1f77b4">median</tspan></text>')
    for y in (y0 + PANEL_PX, y1 + PANEL_PX):
        parts.append(f'<line x1="{MARGIN_PX}" y1="{y}" x2="{WIDTH_PX - MARGIN_PX}" y2="{y}" '
                     'stroke="#999"/>')
    parts.append(f'<text x="{WIDTH_PX - MARGIN_PX}" y="{height - 8}" text-anchor="end">'
                 f'{end_s} s</text></svg>')
    return "\n".join(parts)


def render_html(result: dict[str, Any], ops: list[Op]) -> str:
    verdict = "VALID" if result.get("valid") else "INVALID"
    rows = "".join(f"<tr><td>{html.escape(c)}</td><td>{n}</td></tr>"
                   for c, n in result.get("anomaly_counts", {}).items())
    faults = "".join(
        f"<tr><td>{w['id']}</td><td>{html.escape(w['fault'])}</td>"
        f"<td>{html.escape(str(w.get('targets')))}</td><td>{w['start_ns'] / 1e9:.1f}</td>"
        f"<td>{w['stop_ns'] / 1e9:.1f}</td><td>{w.get('ok_writes_per_s')}</td>"
        f"<td>{w.get('first_ok_write_after_heal_s')}</td></tr>"
        for w in result.get("availability", {}).get("faults", []))
    summary = html.escape(json.dumps({k: result.get(k) for k in
                                      ("seed", "nodes", "duration_s", "ops", "phases")}))
    return f"""<!doctype html><html><head><meta charset="utf-8">
<title>chaos run seed {result.get('seed')}: {verdict}</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:2px 8px;border:1px solid #ccc}}
table{{border-collapse:collapse;margin:1em 0}}.v{{font-size:1.5em}}</style></head><body>
<div class="v">{verdict}</div><p><code>{summary}</code></p>
{svg(ops)}
<h3>Anomalies</h3><table><tr><th>class</th><th>count</th></tr>{rows}</table>
<h3>Faults</h3><table><tr><th>id</th><th>fault</th><th>targets</th><th>start s</th>
<th>heal s</th><th>ok writes/s during</th><th>first ok write after heal (s)</th></tr>{faults}
</table><p>Details and examples: report.json; every op: history.jsonl.</p></body></html>
"""
