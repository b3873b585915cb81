"""Prometheus's text format, written fast enough for an endpoint picker that scrapes every 50 ms.

prometheus-client's registry rebuilds every sample of every metric on each scrape (about 8 µs a
line here): with ten models, their request and time-to-first-byte histograms alone are ~800
lines, 6 ms of CPU a scrape. swapproxy's counters and histograms are fed on the event loop
only, so they can keep their text: :class:`Counter` and :class:`Histogram` children render
their own lines once and again only after they changed, and a family whose children did not
change hands back its last text whole. Levels read at scrape time (states, requests in flight,
what is loaded) are written by :func:`gauge` from plain values.

The output is the format prometheus-client writes (``# HELP``/``# TYPE`` lines, ``_total``
on counters, ``_bucket``/``_count``/``_sum`` on histograms, its float spelling), less the
``_created`` series; tests read it back with prometheus-client's own parser.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Sequence

__all__ = ["CONTENT_TYPE", "Counter", "Histogram", "counter", "gauge", "label_text", "fmt"]

#: The Prometheus text exposition format's content type.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def fmt(value: float) -> str:
    """A sample value spelled as prometheus-client spells it (1.0, 0.005, 1.7e+09, +Inf).

    Python's shortest ``repr``, except ``+Inf``/``-Inf``/``NaN``, and a positive value with seven
    or more digits before the point (below 1e16, where ``repr`` takes an exponent itself), which
    is written ``m.mmm`` ``e+NN`` as Go writes large floats. (Written here, not imported from
    prometheus-client: importing that package for this one function cost 1.5 MB of resident
    memory; a test holds the two to the same text.)
    """
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    text = repr(value)
    point = text.find(".")
    if value <= 0 or point <= 6:
        return text
    digits = text[:point] + text[point + 1:]
    mantissa = (digits[0] + "." + digits[1:]).rstrip("0").rstrip(".")
    return f"{mantissa}e+{point - 1:02d}"



def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def label_text(names: Sequence[str], values: Sequence[str]) -> str:
    """``{a="x",b="y"}`` (empty when there are no labels), values escaped, names sorted as
    prometheus-client sorts them."""
    if not names:
        return ""
    return "{" + ",".join(f'{n}="{_escape(v)}"' for n, v in sorted(zip(names, values))) + "}"


def _head(name: str, help_text: str, kind: str) -> str:
    return f"# HELP {name} {help_text.replace(chr(92), chr(92) * 2).replace(chr(10), chr(92) + 'n')}\n" \
           f"# TYPE {name} {kind}\n"


def _family(name: str, help_text: str, kind: str, samples: Iterable[tuple[str, float]]) -> str:
    return _head(name, help_text, kind) + "".join(f"{name}{labels} {fmt(value)}\n" for labels, value in samples)


def gauge(name: str, help_text: str, samples: Iterable[tuple[str, float]]) -> str:
    """A gauge family from (label text, value) pairs (see :func:`label_text`)."""
    return _family(name, help_text, "gauge", samples)


def counter(name: str, help_text: str, samples: Iterable[tuple[str, float]]) -> str:
    """A counter family (``name_total``) from totals kept elsewhere: (label text, value) pairs."""
    return _family(name + "_total", help_text, "counter", samples)


class _Family:
    """Children by label values; the family's text is rebuilt only when one of them changed."""

    def __init__(self, name: str, help_text: str, labelnames: Sequence[str], kind: str) -> None:
        self.name = name
        self.labelnames = tuple(labelnames)
        self._head = _head(name, help_text, kind)
        self._children: dict[tuple[str, ...], _Child] = {}
        self._text: str | None = None

    def labels(self, *values: str) -> _Child:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._child(values)
            self._text = None
        return child

    def _child(self, values: tuple[str, ...]) -> _Child:
        raise NotImplementedError

    def render(self) -> str:
        text = self._text
        if text is None or any(child.text is None for child in self._children.values()):
            text = self._text = self._head + "".join(child.render() for child in self._children.values())
        return text


class _Child:
    __slots__ = ("family", "labels", "text")

    def __init__(self, family: _Family, labels: str) -> None:
        self.family = family
        self.labels = labels
        self.text: str | None = None  # this child's lines; None once it changed

    def render(self) -> str:
        raise NotImplementedError


class _CounterChild(_Child):
    __slots__ = ("value",)

    def __init__(self, family: _Family, labels: str) -> None:
        super().__init__(family, labels)
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount
        self.text = None

    def render(self) -> str:
        text = self.text
        if text is None:
            text = self.text = f"{self.family.name}_total{self.labels} {fmt(self.value)}\n"
        return text


class Counter(_Family):
    """A counter family: ``name_total`` samples."""

    def __init__(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> None:
        super().__init__(name, help_text, labelnames, "counter")
        self._head = _head(name + "_total", help_text, "counter")

    def _child(self, values: tuple[str, ...]) -> _CounterChild:
        return _CounterChild(self, label_text(self.labelnames, values))

    def labels(self, *values: str) -> _CounterChild:
        return super().labels(*values)  # type: ignore[return-value]


class _HistogramChild(_Child):
    __slots__ = ("buckets", "counts", "sum")

    def __init__(self, family: Histogram, values: tuple[str, ...]) -> None:
        super().__init__(family, label_text(family.labelnames, values))
        names = (*family.labelnames, "le")
        self.buckets = [label_text(names, (*values, le)) for le in family.le]  # each bucket's labels, le among them
        self.counts = [0] * (len(family.bounds) + 1)  # per bucket, the last one +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.family.bounds, value)] += 1  # type: ignore[attr-defined]
        self.sum += value
        self.text = None

    def render(self) -> str:
        text = self.text
        if text is None:
            name = self.family.name
            lines, total = [], 0
            for labels, count in zip(self.buckets, self.counts):
                total += count
                lines.append(f"{name}_bucket{labels} {fmt(total)}\n")
            lines.append(f"{name}_count{self.labels} {fmt(total)}\n{name}_sum{self.labels} {fmt(self.sum)}\n")
            text = self.text = "".join(lines)
        return text


class Histogram(_Family):
    """A histogram family: cumulative ``_bucket`` samples (``le``), ``_count`` and ``_sum``."""

    def __init__(self, name: str, help_text: str, labelnames: Sequence[str], buckets: Sequence[float]) -> None:
        super().__init__(name, help_text, labelnames, "histogram")
        self.bounds = tuple(float(b) for b in buckets)
        self.le = tuple(fmt(b) for b in self.bounds) + ("+Inf",)

    def _child(self, values: tuple[str, ...]) -> _HistogramChild:
        return _HistogramChild(self, values)

    def labels(self, *values: str) -> _HistogramChild:
        return super().labels(*values)  # type: ignore[return-value]
