"""``peers`` in the config: llama-swap's schema, its namespace rules, and the names that route to a peer."""

from __future__ import annotations

import textwrap

import pytest

from swapproxy.config import ConfigError, PeerRoute, Problem, json_schema, parse_config
from swapproxy.redact import Redactor


def parse(text: str, environ: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return parse_config(textwrap.dedent(text), file="t.yaml", environ=environ or {})


def problems(text: str) -> list[tuple[int, str, str]]:
    with pytest.raises(ConfigError) as info:
        parse(text)
    found: list[Problem] = info.value.problems
    return [(p.line, p.key_path, p.message) for p in found]


def test_a_peer_loads_with_llama_swaps_defaults_and_global_macros() -> None:
    config = parse("""\
        macros: {lab: "10.0.0.9"}
        models:
          local: {cmd: "srv --port ${PORT}"}
        peers:
          lab:
            proxy: http://${lab}:8080/
            apiKey: ${env.LAB_KEY}
            models: [small, embeddings/e5, small]
            filters:
              stripParams: "top_k, model"
              setParams: {provider: {zdr: true}}
              setParamsByID: {"lab/small": {temperature: 0.2}}
            timeouts: {connect: 3, responseIdle: 9}
        """, environ={"LAB_KEY": "sk-lab-0123456789"})
    peer = config.peers["lab"]
    assert (peer.proxy, peer.api_key, peer.models) == ("http://10.0.0.9:8080", "sk-lab-0123456789",
                                                       ("small", "embeddings/e5"))  # a repeat is ignored
    assert (peer.connect_timeout, peer.response_header_timeout, peer.response_idle_timeout) == (3.0, 60.0, 9.0)
    assert peer.filters.strip_params == ("top_k",)  # never the model
    assert peer.filters.set_params_by_id == {"lab/small": {"temperature": 0.2}}
    assert config.resolve("lab/small") is None  # setParamsByID names of a peer are no aliases
    spec = peer.spec("embeddings/e5")  # what the forwarder reads
    assert (spec.id, spec.proxy, spec.upstream_api_key) == ("lab/embeddings/e5", peer.proxy, "sk-lab-0123456789")
    assert "sk-lab-0123456789" not in Redactor.for_config(config).text("key sk-lab-0123456789")
    assert "peers" in json_schema()["properties"]


def test_full_names_always_route_and_a_bare_id_only_when_one_peer_lists_it() -> None:
    config = parse("""\
        models:
          local: {cmd: "srv --port ${PORT}", aliases: [shared]}
        peers:
          a: {proxy: "http://h1", models: [m, only-a, shared]}
          b: {proxy: "http://h2", models: [m, a/only-a]}
        """)
    route = config.peer_route
    assert route("a/m") == PeerRoute("a", "m") and route("b/m") == PeerRoute("b", "m")
    assert route("m") is None  # two peers list it: only the full names reach it
    assert route("only-a") == PeerRoute("a", "only-a")
    # "a/only-a" is peer a's full name for only-a before it is peer b's bare id
    assert route("a/only-a") == PeerRoute("a", "only-a") and route("b/a/only-a") == PeerRoute("b", "a/only-a")
    # a local alias shadows a bare peer id (the caller asks resolve() first); the full name stays the peer's
    assert config.resolve("shared") == "local" and route("a/shared") == PeerRoute("a", "shared")
    assert route("a/m").fqn == "a/m"


def test_selectors_and_pins_may_name_peer_models() -> None:
    config = parse("""\
        models:
          local: {cmd: "srv --port ${PORT}"}
        peers:
          lab: {proxy: "http://h1", models: [small]}
          cloud: {proxy: "https://h2/api", models: [big, small]}
        selectors:
          anywhere: {strategy: warm, targets: [lab/small, cloud/small, local]}
          spill: {strategy: spillover, targets: [local, big]}
        profiles:
          remote: {pins: {local: cloud/big}}
        """)
    assert config.selectors["anywhere"].target_ids == ("lab/small", "cloud/small", "local")
    assert config.selectors["spill"].target_ids == ("local", "cloud/big")
    assert config.profiles["remote"].pins == {"local": "cloud/big"}


def test_peer_mistakes_name_their_key() -> None:
    assert problems("""\
        models:
          m: {cmd: "srv --port ${PORT}", aliases: [p/alias]}
          p/own: {cmd: "srv --port ${PORT}"}
        selectors:
          p/sel: {strategy: pin, targets: [m]}
          twice: {strategy: spillover, targets: [p/x, x]}
        profiles:
          pr: {pins: {p/pin: m}}
        peers:
          p:
            proxy: ftp://nowhere
            models: [own, alias, sel, pin, x, "", o/wn]
          p/o: {proxy: "http://h", models: [wn]}
          empty: {proxy: "http://h", models: []}
          nokey: {models: [a]}
        """) == [
        (6, "selectors.twice.targets", "targets name model 'p/x' more than once"),
        (11, "peers.p.proxy", "proxy must be an http(s):// URL (got 'ftp://nowhere')"),
        (12, "peers.p.models[0]", "peer model name 'p/own' is also a model id; 'p/own' always routes to the peer"),
        (12, "peers.p.models[1]", "peer model name 'p/alias' is also an alias of model 'm'; 'p/alias' always "
                                  "routes to the peer"),
        (12, "peers.p.models[2]", "peer model name 'p/sel' is also a selector id"),
        (12, "peers.p.models[3]", "peer model name 'p/pin' is also a pin name of profile 'pr'"),
        (12, "peers.p.models[5]", "a peer model id must not be empty"),
        (13, "peers.p/o.models[0]", "peer model name 'p/o/wn' is ambiguous: peers.p model 'o/wn' has the same name"),
        (14, "peers.empty.models", "a peer needs at least one model"),
        (15, "peers.nokey.proxy", "required key is missing"),
    ]
