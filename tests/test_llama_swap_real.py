"""llama-swap's own config files, unchanged, as users have them on disk (marker: compat).

They live outside the repository, in ../shared/compat (see its README.md), so the default
suite (the README's test command) does not collect these tests: tests/test_config.py checks
the same things on swapproxy's own llama-swap-style fixtures. ``.ci/run`` runs these after
the README's command (``pytest -m compat``); they fail, never skip, when the files are missing.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from llama_swap_checks import UI_ONLY, assert_refused, guessed_port_notice, supported_part
from swapproxy.config import DEFAULT_GROUP, load_config, parse_config

pytestmark = pytest.mark.compat

FULL_EXAMPLE_ENV = {"HOME": "/home/u", "API_KEY_1": "key-one", "API_KEY_2": "key-two",
                    "OPENROUTER_API_KEY": "sk-or"}


def test_llama_swap_docker_example_loads_with_notices(compat: Path) -> None:
    file = compat / "llama-swap-docker.yaml"
    config = load_config(file, environ={})
    assert list(config.models) == ["qwen2.5", "smollm2", "z-image"]
    assert config.health_check_timeout == 300.0
    # z-image has neither proxy nor ${PORT}: the port its cmd listens on is used, with a notice
    assert config.models["z-image"].proxy == "http://127.0.0.1:9999"
    assert config.resolve("dall-e-3") == "z-image"
    assert config.notices == (
        f"{file}:2: logRequests: {UI_ONLY}",
        f"{file}:20: models.z-image: {guessed_port_notice('http://127.0.0.1:9999')}")


def test_llama_swap_unified_example_loads_with_notices(compat: Path) -> None:
    config = load_config(compat / "llama-swap-unified.yaml", environ={})
    assert {mid: m.port for mid, m in config.models.items()} == {
        "llama": 5800, "whisper": 5801, "audio": 5802, "image": None}
    assert config.models["whisper"].cmd[-2:] == ("--inference-path", "")
    assert config.models["whisper"].check_endpoint == "/v1/audio/transcriptions/"
    assert config.models["image"].proxy == "http://127.0.0.1:9999"
    assert [n.split(": ", 2)[1:] for n in config.notices] == [
        ["logRequests", UI_ONLY],
        ["models.image", guessed_port_notice("http://127.0.0.1:9999")]]


# every key of the full example that swapproxy does not implement yet: none, since peers (the
# scale-out issue) landed after the matrix router and scheduler priorities
FULL_EXAMPLE_UNSUPPORTED: list[tuple[int, str]] = []
# genuine mistakes in the example itself, as llama-swap reports them too: names that are not
# models (the example says its group members are illustrative; a peer's model, such as
# z-ai/glm-4.7 in the llm-plan selector, is one now), and a model with a fixed port but no proxy
FULL_EXAMPLE_MISTAKES = [
    (192, "profiles.coding.pins.llm-plan", "'qwen-unlisted' is not a model id, alias, selector or peer model"),
    (208, "selectors.coding-model.targets[1]", "'qwen-unlisted' is not a model id, alias or peer model"),
    (227, "selectors.llama.targets[1]", "'modelA' is not a model id, alias or peer model"),
    (228, "selectors.llama.targets[2]", "'modelB' is not a model id, alias or peer model"),
    (458, "models.unlisted-model", "proxy is required when cmd does not use ${PORT}"),
    (502, "hooks.on_startup.preload[0]", "'llama' is not a model id or alias (it is a selector"),
    (556, "routing.router.settings.groups.group1.members[0]", "'llama' is not a model id"),
    (557, "routing.router.settings.groups.group1.members[1]", "'qwen-unlisted' is not a model"),
    (570, "routing.router.settings.groups.group2.members[1]", "'modelA' is not a model id"),
    (571, "routing.router.settings.groups.group2.members[2]", "'modelB' is not a model id"),
    (585, "routing.router.settings.groups.forever.members[0]", "'forever-modelA' is not a"),
    (586, "routing.router.settings.groups.forever.members[1]", "'forever-modelB' is not a"),
    (587, "routing.router.settings.groups.forever.members[2]", "'forever-modelc' is not a"),
    # its scheduler priorities name models it does not define (llama-swap refuses them too)
    (669, "routing.scheduler.settings.fifo.priority.A", "'A' is not a model id or alias"),
    (670, "routing.scheduler.settings.fifo.priority.B", "'B' is not a model id or alias"),
    (671, "routing.scheduler.settings.fifo.priority.C", "'C' is not a model id or alias"),
    (672, "routing.scheduler.settings.fifo.priority.D", "'D' is not a model id or alias"),
]


def test_llama_swap_full_example_reports_only_its_own_mistakes(compat: Path) -> None:
    assert_refused(compat / "llama-swap-full-example.yaml", FULL_EXAMPLE_ENV,
                   FULL_EXAMPLE_UNSUPPORTED, FULL_EXAMPLE_MISTAKES)


def test_llama_swap_full_example_rest_resolves(compat: Path) -> None:
    """Everything in the full example that swapproxy does support resolves as documented."""
    text = supported_part(compat / "llama-swap-full-example.yaml",
                          groups={"group2": ["docker-llama"]}, no_port="unlisted-model",
                          targets={"coding-model": ["gpt-oss-120b"], "llama": ["docker-llama"]},
                          drop_pins={"coding": ["llm-plan"]})
    config = parse_config(text, environ=FULL_EXAMPLE_ENV)

    model = config.models["gpt-oss-120b"]
    assert model.cmd == ("/path/to/llama-server/llama-server-ec9e0301", "--port", "10001",
                         "--model", "path/to/gpt-oss-120B.gguf", "--ctx-size", "16384",
                         "--temperature", "0.7")
    assert (model.port, model.proxy, model.check_endpoint) == (
        10001, "http://127.0.0.1:8999", "/custom-endpoint")
    assert model.metadata == {
        "port": 10001, "temperature": 0.7,
        "note": "The gpt-oss-120b is running on port 10001 temp=0.7, context=16384",
        "a_list": (1, 1.23, "macros are OK in list and dictionary types: gpt-oss-120b"),
        "an_obj": {"a": "1", "b": 2, "c": (0.7, False, "model: gpt-oss-120b")}}
    assert model.filters.strip_params == ("temperature", "top_p", "top_k")
    assert model.filters.set_params == {"temperature": 0.7, "top_p": 0.9}
    assert (model.ttl, model.unload_timeout, model.concurrency_limit) == (60.0, 10.0, 10)
    assert (model.connect_timeout, model.response_header_timeout) == (30.0, 60.0)
    assert model.send_loading_state is False and config.send_loading_state is True
    assert model.env == {"CUDA_VISIBLE_DEVICES": "0,1,2"}
    assert model.aliases == ("gpt-4o-mini", "gpt-oss-120b:high", "gpt-oss-120b:low")
    assert model.filters.set_params_by_id["gpt-oss-120b:low"] == {"chat_template_kwargs": {"reasoning_effort": "low"}}
    assert model.filters.set_params_by_id["gpt-oss-120b"] == {"chat_template_kwargs": {"reasoning_effort": "medium"}}
    assert model.ignore_websockets is True
    assert [p.pattern for p in config.upstream_ignore_paths] == [r".*\.(js|json|css|png|gif|jpg|jpeg|ico|txt)$",
                                                                 r"^\/ws$|^\/api\/jobs$"]
    assert [(s.id, s.strategy, s.targets) for s in config.selectors.values()] == [
        ("coding-model", "warm", ("gpt-oss-120b",)), ("llm-plan", "pin", ("gpt-oss-120b", "z-ai/glm-4.7")),
        ("llama", "spillover", ("docker-llama",))]
    # its peers load as written; z-ai/glm-4.7 is a bare id only openrouter lists, so it routes there
    assert config.selectors["llm-plan"].target_ids == ("gpt-oss-120b", "openrouter/z-ai/glm-4.7")
    swap_peer, openrouter = config.peers.values()
    assert (swap_peer.proxy, swap_peer.models, swap_peer.api_key) == (
        "http://192.168.1.23", ("model_a", "model_b", "embeddings/model_c"), None)
    assert (openrouter.proxy, openrouter.api_key) == ("https://openrouter.ai/api", "sk-or")
    assert (openrouter.connect_timeout, openrouter.response_header_timeout) == (30.0, 60.0)
    assert openrouter.filters.strip_params == ("temperature", "top_p")
    assert openrouter.filters.set_params == {"provider": {"data_collection": "deny", "zdr": True}}
    assert config.peer_route("embeddings/model_c") == config.peer_route("llama-swap-peer/embeddings/model_c")
    assert config.selectors["llama"].spillover == 4 and config.selectors["coding-model"].name == "Coding Model"
    assert config.profiles["coding"].pins == {"llm-code": "gpt-oss-120b", "image-gen": ""}
    assert model.use_model_name == "openai/gpt-oss-120B" and model.name == "gpt-oss 120B"
    assert model.capabilities is not None and model.capabilities["context"] == 32000
    docker = config.models["docker-llama"]
    assert docker.port == 10002 and docker.proxy == "http://127.0.0.1:10002"
    assert docker.cmd_stop == ("docker", "stop", "docker-llama")
    assert docker.cmd[:6] == ("docker", "run", "--name", "docker-llama", "--init", "--rm")
    assert config.models["unlisted-model"].unlisted is True
    assert config.health_check_timeout == 500.0 and config.start_port == 10001
    assert config.api_keys[2:] == ("key-one", "key-two")
    assert [g.name for g in config.groups] == ["group2", DEFAULT_GROUP]
    keys = [n.split(": ")[1] for n in config.notices]
    assert keys == ["logTimeFormat", "ui",
                    "models.gpt-oss-120b.timeouts.keepalive",
                    "models.gpt-oss-120b.timeouts.tlsHandshake",
                    "models.gpt-oss-120b.timeouts.idleConn",
                    "peers.openrouter.timeouts.keepalive", "peers.openrouter.timeouts.tlsHandshake",
                    "peers.openrouter.timeouts.idleConn"]


def test_llama_swap_full_example_matrix_loads_and_behaves(compat: Path) -> None:
    """The example's own matrix block, its models defined and routing.router.use set to matrix."""
    data = yaml.safe_load((compat / "llama-swap-full-example.yaml").read_text())
    matrix = data["routing"]["router"]["settings"]["matrix"]
    names = {*matrix["vars"].values(), "stable-diffusion", "llama-70B", "qwen-model"}
    doc = {"models": {m: {"cmd": "srv --port ${PORT}"} for m in sorted(names)},
           "routing": {"router": {"use": "matrix", "settings": {"matrix": matrix}}}}
    config = parse_config(yaml.safe_dump(doc), environ={})
    assert config.router == "matrix" and config.matrix is not None
    solve = config.matrix.solve
    assert solve("reranker-model", ["gemma-model", "voxtral-model"]).evict == ()  # with_rerank holds all three
    # image generation beside the running LLM: tts (cost 50) and reranker go
    assert solve("stable-diffusion", ["gemma-model", "voxtral-model", "reranker-model"]).evict == (
        "voxtral-model", "reranker-model")
    assert solve("llama-70B", ["qwen-model", "voxtral-model"]).evict == ("qwen-model", "voxtral-model")
