"""The Grafana dashboard (docs/grafana-dashboard.json) queries only metrics swapproxy exposes (issue 19, part 5).

Traffic first, on a real swapproxy with the fake llama-server — a chat, a stream, a swap
(with a slot cache save), an upstream error, an unknown model, a failed start, a stream
the upstream breaks off — so that every series a panel may show has samples; then every
metric name in every panel's PromQL (and in the dashboard's variables) must be among
the samples of /metrics.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from support import ROOT, fake, make_config

DASHBOARD = ROOT / "docs" / "grafana-dashboard.json"
_METRIC = re.compile(r"\bswapproxy_[A-Za-z0-9_]+")


def panels(node: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, those inside rows too."""
    out = []
    for panel in node.get("panels", []):
        out.append(panel)
        out.extend(panels(panel))
    return out


def queries(dashboard: dict[str, Any]) -> dict[str, list[str]]:
    """{panel title (or variable): its PromQL expressions}."""
    found = {p["title"]: [t["expr"] for t in p.get("targets", [])] for p in panels(dashboard) if p["type"] != "row"}
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            found[f"${variable['name']}"] = [query["query"]]
    return found


def test_the_dashboard_is_grafana_json_with_one_datasource_variable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids)) and dashboard["uid"] == "swapproxy" and dashboard["schemaVersion"] >= 36
    names = [v["name"] for v in dashboard["templating"]["list"]]
    assert names == ["datasource", "model"]
    for panel in panels(dashboard):
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            assert panel["targets"] and all(t["expr"] for t in panel["targets"]), panel["title"]
            assert {"h", "w", "x", "y"} <= set(panel["gridPos"]), panel["title"]


async def test_every_metric_a_panel_queries_is_exposed(proxy_factory, tmp_path: Path) -> None:
    config = make_config(
        {"a": fake("a", "-c", "8", slotCache=True, memory="1GiB"), "b": fake("b", memory="1GiB"),
         "bad": fake("bad", "--exit-during-startup", "1", memory="1GiB"),
         "crash": fake("crash", "--crash-after-tokens", "1", memory="1GiB")},
        groups={"main": {"swap": True, "exclusive": False, "members": ["a", "b"]},
                "side": {"swap": False, "exclusive": False, "members": ["bad", "crash"]}},
        memory={"devices": {"host": "8GiB"}}, stateDir=str(tmp_path))
    proxy = await proxy_factory(config)
    hi = [{"role": "user", "content": "one two"}]

    async def post(body: dict[str, Any]) -> int:
        async with proxy.http.post(proxy.url + "/v1/chat/completions", json=body) as resp:
            try:
                await resp.read()
            except aiohttp.ClientPayloadError:  # the stream the upstream broke off: swapproxy drops the client
                pass
            return resp.status

    assert await post({"model": "a", "messages": hi}) == 200  # a chat (a starts)
    assert await post({"model": "a", "messages": hi, "stream": True}) == 200  # a stream
    assert await post({"model": "b", "messages": hi}) == 200  # a swap: a saves its slot and stops
    assert await post({"model": "a", "messages": hi}) == 200  # back: a restores it
    assert await post({"model": "a", "messages": [{"role": "user", "content": "w " * 20}]}) == 400  # over a's context
    assert await post({"model": "nope", "messages": hi}) == 404
    assert await post({"model": "bad", "messages": hi}) == 503  # a failed start
    assert await post({"model": "crash", "messages": hi, "stream": True}) == 200  # cut by the upstream
    async with proxy.http.get(proxy.url + "/metrics") as resp:
        text = await resp.text()
    exposed = {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}

    missing = {}
    asked = queries(json.loads(DASHBOARD.read_text()))
    for title, exprs in asked.items():
        names = {name for expr in exprs for name in _METRIC.findall(expr)}
        assert names, f"{title}: queries no swapproxy metric"
        if names - exposed:
            missing[title] = sorted(names - exposed)
    assert not missing, f"panels query metrics /metrics does not expose: {missing}"
    queried = {name for exprs in asked.values() for expr in exprs for name in _METRIC.findall(expr)}
    families = {name.removesuffix("_bucket").removesuffix("_total") for name in queried}
    assert {"swapproxy_requests", "swapproxy_request_duration_seconds", "swapproxy_time_to_first_byte_seconds",
            "swapproxy_swaps", "swapproxy_model_start_seconds", "swapproxy_model_state", "swapproxy_upstream_rss_bytes",
            "swapproxy_model_memory_bytes", "swapproxy_device_memory_budget_bytes", "swapproxy_tokens",
            "swapproxy_slot_cache", "swapproxy_inflight_requests", "swapproxy_waiting_requests",
            "swapproxy_queue_depth"} <= families
