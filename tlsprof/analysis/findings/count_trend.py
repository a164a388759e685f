"""The count trend of live connections against traffic, from the session's history: read by
leaked-connections (the leak) and compression-enabled (its evidence)."""

# how many leaked connections make a finding (leaked-connections says why)
LEAK_MIN_CONNECTIONS = 5

# "Count growing while traffic is flat", from the session's history (native facts only: live
# connections and the shim's count of SSL_read/write calls that moved data). The history is cut in
# three equal spans of time: the mean live count must rise from each span to the next by
# LEAK_MIN_CONNECTIONS in all, while the traffic rate of the busiest span is at most
# TREND_FLAT_RATIO times the quietest's (a ramp-up of busy connections raises traffic with the
# count; a leak does not). The connections called leaked are those that moved no data for
# TREND_SILENT_S or more. A healthy server under steady load keeps a flat count.
TREND_MIN_SPAN_S = 20.0
TREND_MIN_POINTS = 8
TREND_FLAT_RATIO = 2.0
TREND_SILENT_S = 10.0


def _count_trend(report: dict):
    """Evidence that live connections grew while traffic was flat, or None."""
    points = [
        p
        for p in report.get("history") or []
        if isinstance(p, dict)
        and isinstance(p.get("t"), (int, float))
        and isinstance(p.get("connections"), int)
        and isinstance(p.get("io_calls"), int)
    ]
    if len(points) < TREND_MIN_POINTS:
        return None
    start, span = points[0]["t"], points[-1]["t"] - points[0]["t"]
    if span < TREND_MIN_SPAN_S:
        return None
    thirds = [[p for p in points if start + k * span / 3 <= p["t"] <= start + (k + 1) * span / 3] for k in range(3)]
    if any(len(third) < 2 for third in thirds):
        return None
    counts = [sum(p["connections"] for p in third) / len(third) for third in thirds]
    rates = []
    for third in thirds:
        dt = third[-1]["t"] - third[0]["t"]
        rates.append((third[-1]["io_calls"] - third[0]["io_calls"]) / dt if dt > 0 else 0.0)
    growing = counts[0] < counts[1] < counts[2] and counts[2] - counts[0] >= LEAK_MIN_CONNECTIONS
    flat = min(rates) > 0 and max(rates) <= TREND_FLAT_RATIO * min(rates)
    if not (growing and flat):
        return None
    return {
        "span_s": round(span, 1),
        "mean_connections": [round(c, 1) for c in counts],
        "io_calls_per_s": [round(r, 1) for r in rates],
    }
