"""The Prometheus text exposition, fast for the per-volume families.

prometheus_client's `generate_latest` spends several µs on each sample (label-name validation and
escaping through several calls). With three samples per volume that is most of a scrape: bench/
bench_scrape.py measured the per-volume families written by `generate_latest` at 46-89 ms for 1,000
volumes and 0.65-1.1 s for 10,000 (as GaugeMetricFamily or as these rows), against 4-8 ms and 34-55 ms
written here; the quota-tree search is 4 ms and 92 ms. The per-volume and per-snapshot families are
therefore `GaugeRows`: rows of LabelSet and value written here directly. A LabelSet is rendered once
when made, and the collector keeps one per volume and snapshot for the object's life, so a scrape
only formats the value. Every other family goes through `generate_latest` unchanged.
`render(registry)` and `generate_latest(registry)` expose the same samples (tests compare them); the
row families also answer `.samples`, so anything else that walks a registry still works.
"""

from collections.abc import Iterable, Sequence

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Sample

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class LabelSet:
    """Label names and values, with their text-format rendering (`a="1",b="2"`) made once."""

    __slots__ = ("names", "text", "values")

    def __init__(self, names: Sequence[str], values: Sequence[str]) -> None:
        if len(names) != len(values):
            raise ValueError(f"label names {names} and values {values} differ in number")
        self.names = tuple(names)
        self.values = tuple(values)
        self.text = ",".join(
            f'{n}="{_escape_label_value(v)}"' for n, v in zip(self.names, self.values, strict=True)
        )

    def as_dict(self) -> dict[str, str]:
        return dict(zip(self.names, self.values, strict=True))


class GaugeRows(Metric):
    """A gauge family kept as rows: `labels[i]` (a LabelSet) has the integer value `values[i]`.

    `labelnames` must be sorted (the order the text format is written in) and every row's LabelSet
    must have them. Append to `labels` and `values` (two flat lists: no tuple per row, which at
    10,000 volumes is garbage-collector work a scrape can do without); `samples` is computed from
    them on demand.
    """

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str]) -> None:
        super().__init__(name, documentation, "gauge")
        if list(labelnames) != sorted(labelnames):
            raise ValueError(f"{name}: label names {labelnames} are not sorted")
        self.labelnames = tuple(labelnames)
        self.labels: list[LabelSet] = []
        self.values: list[int] = []  # byte counts

    @property
    def samples(self) -> list[Sample]:
        return [
            Sample(self.name, labels.as_dict(), float(value))
            for labels, value in zip(self.labels, self.values, strict=True)
        ]

    @samples.setter
    def samples(self, value: list[Sample]) -> None:
        if value:  # Metric.__init__ sets an empty list; anything else would be lost
            raise TypeError(f"{self.name}: add labels and values, not samples")


def _escape_label_value(value: str) -> str:
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return value


def _render_rows(family: GaugeRows, out: list[str]) -> None:
    documentation = family.documentation.replace("\\", "\\\\").replace("\n", "\\n")
    out.append(f"# HELP {family.name} {documentation}\n# TYPE {family.name} gauge\n")
    names = family.labelnames
    prefix = family.name + "{"
    if len(family.labels) != len(family.values):
        raise ValueError(f"{family.name}: {len(family.labels)} label sets for {len(family.values)} values")
    for labels, value in zip(family.labels, family.values, strict=True):
        if labels.names is not names and labels.names != names:
            raise ValueError(f"{family.name}: a row has labels {labels.names}, not {names}")
        out.append(f"{prefix}{labels.text}}} {value}\n")


class _One:
    def __init__(self, metric: Metric) -> None:
        self._metric = metric

    def collect(self) -> Iterable[Metric]:
        return (self._metric,)


def render(registry: CollectorRegistry) -> bytes:
    """The text exposition of `registry` (version 0.0.4, what /metrics serves)."""
    out: list[str] = []
    for family in registry.collect():
        if isinstance(family, GaugeRows):
            _render_rows(family, out)
        else:
            out.append(generate_latest(_One(family)).decode())
    return "".join(out).encode()
