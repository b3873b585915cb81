"""The fleet's view of a host: /metrics read the way the endpoint picker reads it, through the mapping file.

``docs/scale-out/epp-config.yaml`` tells llm-d's endpoint picker (its ``core-metrics-extractor``)
which of swapproxy's metrics are an engine's waiting and running requests, cache use and loaded
adapters. :func:`epp_reads` applies that mapping as the picker's extractor does (a spec is a
metric name with optional labels; the LoRA-style info metric's series with the largest value
wins; its ``running_lora_adapters``/``waiting_lora_adapters`` are comma-separated names and
``max_lora`` a count), on text parsed by prometheus-client's parser, through a start, a swap,
a queued request and an unload.
"""

from __future__ import annotations

import asyncio
import json
import re
import statistics
import time
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from support import NO_WAIT, Proxy, fake, make_config, models, open_gated_stream, release_all, wait_until

from swapproxy.states import ProcessState
from swapproxy.tokens import TokenTap, tail_counts

DOCS = Path(__file__).resolve().parents[1] / "docs" / "scale-out"
_SPEC = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?$")


def engine_mapping(config: dict[str, Any]) -> dict[str, str]:
    """The specs the extractor in an EndpointPickerConfig uses for its default engine."""
    extractor = next(p for p in config["plugins"] if p["type"] == "core-metrics-extractor")["parameters"]
    return next(e for e in extractor["engineConfigs"] if e["name"] == extractor["defaultEngine"])


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """``name{label=value,...}`` as the picker's parseStringToSpec reads it (quotes optional)."""
    match = _SPEC.match(spec.strip())
    assert match, spec
    labels = dict(pair.split("=", 1) for pair in (match[2] or "").split(",") if pair)
    return match[1], {k.strip(): v.strip().strip('"') for k, v in labels.items()}


def epp_reads(text: str, mapping: dict[str, str]) -> dict[str, Any]:
    """What the picker's extractor stores for this endpoint: WaitingQueueSize, RunningRequestsSize,
    KVCacheUsagePercent, ActiveModels, WaitingModels, MaxActiveModels."""
    samples = [s for family in text_string_to_metric_families(text) for s in family.samples]

    def matching(spec: str) -> list[Any]:
        name, labels = parse_spec(spec)
        found = [s for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
        assert found, f"{spec} is not in /metrics"
        return found

    lora = max(matching(mapping["loraSpec"]), key=lambda s: s.value)  # the latest update wins

    def names(label: str) -> set[str]:
        return {n.strip() for n in lora.labels.get(label, "").split(",") if n.strip()}

    assert not mapping.get("cacheInfoSpec")
    return {"WaitingQueueSize": int(matching(mapping["queuedRequestsSpec"])[0].value),
            "RunningRequestsSize": int(matching(mapping["runningRequestsSpec"])[0].value),
            "KVCacheUsagePercent": matching(mapping["kvUsageSpec"])[0].value,
            "ActiveModels": names("running_lora_adapters"), "WaitingModels": names("waiting_lora_adapters"),
            "MaxActiveModels": int(lora.labels["max_lora"])}


def room_for_another(reads: dict[str, Any]) -> bool:
    """The picker's lora-affinity test for "this endpoint can load one more"."""
    return len(reads["ActiveModels"]) + len(reads["WaitingModels"]) < reads["MaxActiveModels"]


async def reads(proxy: Proxy) -> dict[str, Any]:
    async with proxy.http.get(proxy.url + "/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    return epp_reads(text, engine_mapping(yaml.safe_load((DOCS / "epp-config.yaml").read_text())))


def test_the_kubernetes_manifest_maps_the_same_metrics() -> None:
    docs = list(yaml.safe_load_all((DOCS / "kubernetes.yaml").read_text()))
    config_map = next(d for d in docs if d["kind"] == "ConfigMap")
    in_cluster = yaml.safe_load(config_map["data"]["epp-config.yaml"])
    assert engine_mapping(in_cluster) == engine_mapping(yaml.safe_load((DOCS / "epp-config.yaml").read_text()))
    pool = next(d for d in docs if d["kind"] == "InferencePool")
    swapproxy = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "swapproxy")
    assert pool["spec"]["selector"]["matchLabels"].items() <= swapproxy["spec"]["template"]["metadata"]["labels"].items()
    probe = swapproxy["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]
    assert probe["path"] == "/health/liveness"
    assert [e["port"] for e in yaml.safe_load((DOCS / "endpoints.yaml").read_text())["endpoints"]] == ["8080"] * 3


async def test_the_picker_reads_the_loaded_set_through_start_swap_queue_and_unload(proxy_factory) -> None:
    proxy = await proxy_factory(make_config(
        {"a": fake("a", "--startup-delay", "0.5", aliases=["a-alias"]), "b": fake("b"), "c": fake("c")},
        selectors={"task": {"strategy": "warm", "targets": ["a", "b"]}}, **NO_WAIT))
    empty = await reads(proxy)
    assert (empty["ActiveModels"], empty["WaitingModels"], empty["MaxActiveModels"]) == (set(), set(), 1)
    assert room_for_another(empty)  # nothing runs: a model can start without stopping another

    starting = asyncio.ensure_future(proxy.chat("a"))
    await wait_until(lambda: proxy.swapper.slot("a").process.state is ProcessState.STARTING, 5, "a to start")
    began = time.monotonic()  # the host stays ready (its readiness probe answers) during the swap
    async with proxy.http.get(proxy.url + "/health/liveness") as resp:
        assert resp.status == 200 and time.monotonic() - began < 0.5
    seen = await reads(proxy)  # a starting model counts as loaded: requests for it join that start
    assert seen["ActiveModels"] == {"a", "a-alias", "task"} and seen["WaitingQueueSize"] == 1
    assert not room_for_another(seen)  # one model at a time: another would stop a
    assert (await starting)[0] == 200
    seen = await reads(proxy)
    assert seen["ActiveModels"] == {"a", "a-alias", "task"}
    assert (seen["WaitingQueueSize"], seen["RunningRequestsSize"]) == (0, 0)

    assert (await proxy.chat("b"))[0] == 200  # the swap: a stops, b starts
    stream = await open_gated_stream(proxy, "b")  # one request in flight on b: 1 of its 4 slots
    seen = await reads(proxy)
    assert seen["ActiveModels"] == {"b", "task"} and seen["RunningRequestsSize"] == 1
    assert seen["KVCacheUsagePercent"] == 0.25
    waiting = asyncio.ensure_future(proxy.chat("c"))  # c must wait: b is busy
    await wait_until(lambda: proxy.swapper.queue_depth() == 1, 5, "the request for c to queue")
    seen = await reads(proxy)
    assert seen["WaitingModels"] == {"c"} and seen["WaitingQueueSize"] == 1
    assert (seen["MaxActiveModels"], room_for_another(seen)) == (3, False)
    await release_all(proxy, "b", stream)
    assert (await waiting)[0] == 200
    seen = await reads(proxy)
    assert (seen["ActiveModels"], seen["WaitingModels"]) == ({"c"}, set())

    async with proxy.http.post(proxy.url + "/api/models/unload") as resp:
        assert resp.status == 200
    seen = await reads(proxy)
    assert (seen["ActiveModels"], seen["MaxActiveModels"], room_for_another(seen)) == (set(), 1, True)


async def test_room_for_more_models_comes_from_the_memory_budget(proxy_factory) -> None:
    # 3 GiB for models of 1 GiB each, which may run together when they fit
    proxy = await proxy_factory(make_config(models("a", "b", "c", "d", memory="1GiB"),
                                            memory={"devices": {"host": "3GiB"}, "shareDefaultGroup": True}))
    assert (await reads(proxy))["MaxActiveModels"] == 3
    for name in ("a", "b"):
        assert (await proxy.chat(name))[0] == 200
    seen = await reads(proxy)
    assert seen["ActiveModels"] == {"a", "b"} and seen["MaxActiveModels"] == 3 and room_for_another(seen)
    assert (await proxy.chat("c"))[0] == 200
    seen = await reads(proxy)
    assert seen["MaxActiveModels"] == 3 and not room_for_another(seen)  # a fourth would stop one


async def test_a_scrape_with_ten_models_stays_under_2ms_of_cpu(proxy_factory) -> None:
    ids = [f"m{i}" for i in range(10)]
    # ten running processes (ready once spawned), each with the series a request leaves behind
    proxy = await proxy_factory(make_config(
        {mid: {"cmd": "sleep 120", "proxy": "http://127.0.0.1:9", "checkEndpoint": "none"} for mid in ids},
        groups={"all": {"swap": False, "exclusive": False, "members": ids}}))
    await asyncio.gather(*(proxy.swapper.load(mid) for mid in ids))
    metrics = proxy.runtime.metrics
    for mid in ids:
        tap = TokenTap()
        tap(json.dumps({"usage": {"prompt_tokens": 3, "completion_tokens": 5}}).encode())
        metrics.observe_response(mid, "/v1/chat/completions", tap, time.perf_counter(),
                                 tail_counts(tap.tail, sse=False, complete=tap.complete))
        metrics.observe_request(mid, "/v1/chat/completions", 200, 0.01)
    metrics.render()
    walks = metrics.rss.walks
    batches = []
    for _ in range(5):
        began = time.process_time()
        for _ in range(40):
            metrics.observe_request("m3", "/v1/chat/completions", 200, 0.01)  # traffic between scrapes
            metrics.render()
        batches.append((time.process_time() - began) / 40)
    assert statistics.median(batches) < 0.002, batches
    assert metrics.rss.walks == walks  # the process table is not walked on the scrape path again
    assert metrics.duration.render() is metrics.duration.render()  # unchanged text is kept, not rewritten
    text = metrics.render().decode()
    assert text.count('swapproxy_model_state{model="m9",state="ready"} 1.0') == 1
    assert len(text.splitlines()) > 700  # ten models' worth of series
