"""The running upstreams' own /metrics in swapproxy's, each sample labelled with its model.

Real swapproxy, real fake llama-servers: ``--metrics`` serves llama-server's text (a few
of its families), without it the server answers 501 as llama-server does.
"""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from support import Proxy, fake, make_config, wait_until
from swapproxy.upstream_metrics import relabel, render

SIDE = {"side": {"swap": False, "exclusive": False, "members": ["a", "b", "plain"]}}


async def scrape(proxy: Proxy) -> str:
    async with proxy.http.get(proxy.url + "/metrics") as resp:
        assert resp.status == 200
        return await resp.text()


def values(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def test_each_ready_models_metrics_with_a_model_label(proxy_factory) -> None:
    proxy = await proxy_factory(make_config({"a": fake("a", "--metrics"), "b": fake("b", "--metrics"),
                                             "plain": fake("plain")}, groups=SIDE))
    for model in ("a", "b", "plain"):
        assert (await proxy.post("/v1/chat/completions", {"model": model, "messages": [
            {"role": "user", "content": "one two three"}]})).status == 200
    text = await scrape(proxy)
    got = values(text)  # the whole text parses: one family per name, its samples together
    assert got[("llamacpp:prompt_tokens_total", (("model", "a"),))] == 3
    assert got[("llamacpp:tokens_predicted_total", (("model", "b"),))] == 5
    assert not any(dict(labels).get("model") == "plain" for name, labels in got if name.startswith("llamacpp:"))
    assert text.count("# TYPE llamacpp:prompt_tokens_total counter") == 1
    assert ("swapproxy_swaps_total", (("model", "a"),)) in got  # swapproxy's own are still there

    async with proxy.http.post(proxy.url + "/api/models/unload/a") as resp:
        assert resp.status == 200
    await wait_until(lambda: "a" not in proxy.swapper.running(), 10, "a stopped")
    assert not any(dict(labels).get("model") == "a" for name, labels in values(await scrape(proxy))
                   if name.startswith("llamacpp:"))  # a stopped model's figures go with it


def test_relabelling_keeps_the_upstreams_own_labels_and_groups_families() -> None:
    upstream = ('# HELP vllm:e2e_request_latency_seconds latency\n'
                '# TYPE vllm:e2e_request_latency_seconds histogram\n'
                'vllm:e2e_request_latency_seconds_bucket{le="0.5",model="meta/llama"} 3\n'
                'vllm:e2e_request_latency_seconds_bucket{le="+Inf",model="meta/llama"} 4\n'
                'vllm:e2e_request_latency_seconds_count{model="meta/llama"} 4\n'
                'vllm:e2e_request_latency_seconds_sum{model="meta/llama"} 1.5\n'
                'up_seconds{} 7\n')
    text = render([relabel(upstream, "x"), relabel(upstream, "y")])
    got = values(text)
    assert got[("vllm:e2e_request_latency_seconds_bucket",
                (("exported_model", "meta/llama"), ("le", "0.5"), ("model", "y")))] == 3
    assert got[("up_seconds", (("model", "x"),))] == 7
    assert text.count("# TYPE vllm:e2e_request_latency_seconds histogram") == 1
