"""swapproxy's own Prometheus text: what prometheus-client's parser reads back is what was counted."""

from __future__ import annotations

import random

from prometheus_client.parser import text_string_to_metric_families

from prometheus_client.utils import floatToGoString

from swapproxy.exposition import Counter, Histogram, fmt, gauge, label_text


def parsed(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_counters_with_awkward_label_values_read_back() -> None:
    counter = Counter("x_requests", 'help with "quotes", a \\ and a\nnewline', ["model", "route"])
    odd = 'a "quoted" \\ back\nslash'
    counter.labels(odd, "/v1/x").inc()
    counter.labels(odd, "/v1/x").inc(2.5)
    counter.labels("plain", "/").inc()
    got = parsed(counter.render() + gauge("x_level", "a level", [(label_text(("model",), (odd,)), 7)]))
    assert got[("x_requests_total", (("model", odd), ("route", "/v1/x")))] == 3.5
    assert got[("x_requests_total", (("model", "plain"), ("route", "/")))] == 1
    assert got[("x_level", (("model", odd),))] == 7


def test_histogram_buckets_are_cumulative_and_le_inclusive() -> None:
    bounds = (0.005, 0.1, 1, 10)
    histogram = Histogram("x_seconds", "durations", ["model"], bounds)
    values = [random.choice([0.005, 0.1, 1, 10, 11]) * random.choice([1, 0.5, 1.5]) for _ in range(500)]
    for v in values:
        histogram.labels("m").observe(v)
    got = parsed(histogram.render())
    for le in (*bounds, float("inf")):
        label = "+Inf" if le == float("inf") else str(float(le))
        assert got[("x_seconds_bucket", (("le", label), ("model", "m")))] == sum(v <= le for v in values)
    assert got[("x_seconds_count", (("model", "m"),))] == len(values)
    assert abs(got[("x_seconds_sum", (("model", "m"),))] - sum(values)) < 1e-6


def test_a_family_keeps_its_text_until_a_child_changes() -> None:
    counter = Counter("x_events", "events", ["kind"])
    child = counter.labels("a")
    child.inc()
    first = counter.render()
    assert counter.render() is first  # nothing changed: the same text, not rebuilt
    child.inc()
    assert counter.render() is not first and "x_events_total{kind=\"a\"} 2.0" in counter.render()
    counter.labels("b")  # a new child, never counted: listed at 0
    assert 'x_events_total{kind="b"} 0.0' in counter.render()


def test_values_are_spelled_as_prometheus_client_spells_them() -> None:
    rng = random.Random(7)
    values = [0.0, -0.0, 1.0, -1.5, 0.005, 1e-9, 123456.0, 1234567.0, 9999999.0, 10000000.0, 12345678.9,
              25769803776.0, 1e15, 9.99e15, 1e16, 1.7e9, float("inf"), float("-inf"), float("nan"), 3, 10 ** 12]
    values += [rng.uniform(0, 10) ** rng.uniform(0, 20) for _ in range(2000)]
    values += [-rng.uniform(0, 1e12) for _ in range(200)] + [rng.randrange(0, 2 ** 40) for _ in range(500)]
    assert [fmt(v) for v in values] == [floatToGoString(v) for v in values]
