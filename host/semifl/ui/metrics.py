"""/metrics: a source's counters in Prometheus' text format through the official client library
(prometheus_client), every name prefixed `semifl_`. A collector of its own registry builds the families at
scrape time from the source's snapshot, so nothing is counted twice and the session is never touched.

| name | type | labels | what |
|---|---|---|---|
| semifl_round | gauge | | the round open now (the last one, once the run is over) |
| semifl_rounds_total | counter | | rounds finished |
| semifl_round_phase_seconds_total | counter | phase | seconds finished rounds spent in each phase (ready, train, upload, aggregate, evaluate, ...) |
| semifl_last_round_phase_seconds | gauge | phase | the same, of the last finished round |
| semifl_accuracy | gauge | | the last finished round's accuracy (0..1; personalization: the devices' mean) |
| semifl_loss | gauge | | its loss |
| semifl_messages_total | counter | topic, device_class | device messages taken without a rejection, by topic leaf (caps, presence, status, up) |
| semifl_rejected_messages_total | counter | reason, device_class | device messages refused, by reason (docs/protocol.md); device_class "unknown" for devices without caps |
| semifl_bytes_total | counter | direction, device_class | bytes from (up) and to (down) devices |
| semifl_devices | gauge | device_class | devices that have reported capabilities |
| semifl_devices_online | gauge | device_class | of them, connected now |
| semifl_device_joules_total | counter | device_class, phase | the virtual meter's joules (semifl.energy) over finished rounds |
| semifl_late_total | counter | kind | contributions that came after their round closed |
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class SourceCollector:
    def __init__(self, source):
        self.source = source

    def describe(self):
        return []   # built at scrape time: no names to check at registration

    def collect(self):
        c = self.source.counters()
        yield GaugeMetricFamily("semifl_round", "The round open now (the last one once the run is over)", value=c["round"])
        yield CounterMetricFamily("semifl_rounds", "Rounds finished", value=c["rounds"])
        tot = CounterMetricFamily("semifl_round_phase_seconds", "Seconds finished rounds spent in each phase",
                                  labels=["phase"])
        for ph, v in sorted(c["phase_s"].items()):
            tot.add_metric([ph], v)
        yield tot
        last = c["last"] or {}
        g = GaugeMetricFamily("semifl_last_round_phase_seconds", "Seconds of each phase of the last finished round",
                              labels=["phase"])
        for ph, v in sorted((last.get("phases_s") or {}).items()):
            g.add_metric([ph], v)
        yield g
        for name, key, what in (("semifl_accuracy", "accuracy", "Accuracy of the last finished round (0..1)"),
                                ("semifl_loss", "loss", "Loss of the last finished round")):
            if last.get(key) is not None:
                yield GaugeMetricFamily(name, what, value=last[key])
        for name, key, labels, what in (
                ("semifl_messages", "taken", ["topic", "device_class"], "Device messages taken without a rejection"),
                ("semifl_rejected_messages", "rejected", ["reason", "device_class"], "Device messages refused, by reason"),
                ("semifl_bytes", "bytes", ["direction", "device_class"], "Bytes from (up) and to (down) devices"),
                ("semifl_device_joules", "joules", ["device_class", "phase"],
                 "Joules of the devices over finished rounds (virtual meter)")):
            f = CounterMetricFamily(name, what, labels=labels)
            for k, v in sorted(c[key].items()):
                f.add_metric(list(k), v)
            yield f
        for name, key, what in (("semifl_devices", "known", "Devices that have reported capabilities"),
                                ("semifl_devices_online", "online", "Devices connected now")):
            f = GaugeMetricFamily(name, what, labels=["device_class"])
            for k, v in sorted(c[key].items()):
                f.add_metric([k], v)
            yield f
        late = CounterMetricFamily("semifl_late", "Contributions that came after their round closed", labels=["kind"])
        for k, v in sorted(c["late"].items()):
            late.add_metric([k], v)
        yield late


def registry_for(source) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(SourceCollector(source))
    return reg


def exposition(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
