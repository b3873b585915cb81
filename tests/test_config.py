"""Tests for swapproxy.config: llama-swap's config format, resolved and checked with file:line."""

from __future__ import annotations

import dataclasses
import json
import textwrap
from pathlib import Path

import pytest

from llama_swap_checks import UI_ONLY, assert_refused, guessed_port_notice, supported_part, where
from swapproxy.config import (
    DEFAULT_GROUP,
    Config,
    ConfigError,
    GroupConfig,
    ModelConfig,
    Problem,
    json_schema,
    load_config,
    parse_config,
)

HERE = Path(__file__).resolve().parent
FIXTURES = HERE / "configs"
FIXTURE_ENV = {"SWAP_KEY": "secret", "LLAMA_BIN": "/opt/llama", "HOME": "/home/tester"}
FULL_STYLE_ENV = {"WEIGHTS_HOME": "/srv", "FIXTURE_KEY_A": "key-a", "FIXTURE_KEY_B": "key-b",
                  "FIXTURE_PEER_KEY": "peer-key"}


def parse(text: str, environ: dict[str, str] | None = None) -> Config:
    return parse_config(textwrap.dedent(text), file="t.yaml", environ=environ or {})


def problems(text: str, environ: dict[str, str] | None = None) -> list[Problem]:
    with pytest.raises(ConfigError) as info:
        parse(text, environ)
    return info.value.problems


# --------------------------------------------------------------------------- loading


def test_llama_swap_minimal_example_loads() -> None:
    config = parse('models: {model1: {cmd: "llama-server --port ${PORT} -m x.gguf"}}')
    model = config.models["model1"]
    assert model.cmd == ("llama-server", "--port", "5800", "-m", "x.gguf")
    assert model.port == 5800
    assert model.proxy == "http://127.0.0.1:5800"
    assert model.check_endpoint == "/health"
    assert (model.ttl, model.unload_timeout, model.health_check_timeout) == (0.0, 10.0, 120.0)
    assert (model.concurrency_limit, model.connect_timeout, model.response_header_timeout) == (
        10, 30.0, 0.0)
    assert model.cmd_stop is None and model.aliases == () and model.group == DEFAULT_GROUP
    assert config.groups == (GroupConfig(DEFAULT_GROUP, True, True, False, ("model1",)),)
    assert (config.log_level, config.log_to_stdout, config.start_port) == ("info", "proxy", 5800)
    assert config.max_request_body_mb == 256.0 and config.default_model is None
    assert config.notices == () and config.file == "t.yaml"


def test_fixture_with_legacy_groups_macros_env_aliases_filters() -> None:
    config = load_config(FIXTURES / "macros_groups.yaml", environ=FIXTURE_ENV)
    llama = config.models["org/llama:8b"]
    # model macro ctx=8192 overrides the global one, also inside the global base-args macro
    assert llama.cmd == ("/opt/llama/llama-server", "--ctx-size", "8192", "--port", "9000",
                         "-m", "/models/org/llama:8b.gguf")
    assert llama.port == 9000 and llama.proxy == "http://127.0.0.1:9000"
    assert llama.ttl == 60.0 and llama.health_check_timeout == 5.0  # not clamped to 15
    assert llama.aliases == ("llama", "gpt-4o")
    assert dict(llama.env) == {"CUDA_VISIBLE_DEVICES": "0", "HOME_DIR": "/home/tester"}
    assert llama.filters.strip_params == ("temperature", "top_p")
    assert dict(llama.filters.set_params) == {"temperature": 0.5}
    assert llama.metadata == {"port": 9000, "temperature": 0.5, "note": "ctx 8192 on 9000",
                              "nested": ("org/llama:8b", 8192, 1)}
    assert llama.send_loading_state is True and llama.group == "chat"

    embed = config.models["embed"]
    assert embed.cmd == ("/opt/llama/llama-server", "--embedding", "--port", "9001")
    assert embed.check_endpoint is None
    assert (embed.ttl, embed.unload_timeout, embed.send_loading_state) == (300.0, 3.0, False)

    remote = config.models["remote"]
    assert remote.port is None and remote.proxy == "http://127.0.0.1:7000"
    assert remote.cmd == ("docker", "run", "--name", "remote", "-p", "7000:8080", "image")
    assert remote.cmd_stop == ("kill", "-TERM", "${PID}")
    assert (remote.ttl, remote.concurrency_limit) == (0.0, 2)
    assert (remote.use_model_name, remote.name, remote.description) == (
        "remote-4096", "Remote remote", None)

    assert config.groups == (GroupConfig("chat", True, False, False, ("org/llama:8b", "embed")),
                             GroupConfig(DEFAULT_GROUP, True, True, False, ("remote",)))
    assert config.group_of("remote").name == DEFAULT_GROUP
    assert config.group_of("embed").exclusive is False
    assert config.preload == ("org/llama:8b",)
    assert config.api_keys == ("sk-secret",)
    assert config.resolve("gpt-4o") == "org/llama:8b"
    assert config.resolve("embed") == "embed"
    assert config.resolve("nope") is None
    file = str(FIXTURES / "macros_groups.yaml")
    assert config.notices == (
        f"{file}:28: models.org/llama:8b.filters.stripParams: 'model' removed; "
        f"the model parameter is never stripped",
        f"{file}:31: models.org/llama:8b.filters.setParams.model: removed; "
        f"the model parameter is never overridden (use useModelName)")


def test_fixture_with_routing_groups_form() -> None:
    config = load_config(FIXTURES / "routing_groups.yaml", environ={})
    assert config.groups == (GroupConfig("always", False, False, True, ("embedder",)),
                             GroupConfig("llms", True, True, False, ("qwen", "gemma")))
    assert (config.log_level, config.log_to_stdout) == ("debug", "both")
    assert config.default_model == "qwen"  # given as the alias "small"
    assert config.max_request_body_mb == 64.0 and config.include_aliases_in_list is True
    qwen = config.models["qwen"]
    assert (qwen.connect_timeout, qwen.response_header_timeout) == (5.0, 120.0)
    assert config.models["gemma"].cmd == ("llama-server", "--port", "5801", "-m",
                                          "my models/gemma.gguf")
    embedder = config.models["embedder"]
    assert embedder.cmd == ("llama-server", "--embedding", "--port", "5802")  # "\" continues
    assert embedder.capabilities == {"in": ("text",), "context": 2048}
    assert [n.split(": ", 1)[1] for n in config.notices] == [
        "models.qwen.timeouts.idleConn: accepted; swapproxy does not use it"]


def test_both_group_forms_together() -> None:
    config = parse("""\
        groups:
          a: {members: [m1]}
        routing: {router: {settings: {groups: {b: {members: [m2], persistent: true}}}}}
        models:
          m1: {cmd: "s --port ${PORT}"}
          m2: {cmd: "s --port ${PORT}"}
          m3: {cmd: "s --port ${PORT}"}
        """)
    assert [(g.name, g.members, g.persistent) for g in config.groups] == [
        ("a", ("m1",), False), ("b", ("m2",), True), (DEFAULT_GROUP, ("m3",), False)]


def test_port_assignment_follows_config_order_and_is_stable() -> None:
    text = """\
        startPort: 7000
        macros: {listen: "--port ${PORT}"}
        models:
          zeta: {cmd: "srv --port ${PORT}"}
          fixed: {cmd: "srv --port 9999", proxy: "http://127.0.0.1:9999"}
          alpha: {cmd: "srv ${listen}"}
          beta: {cmd: "srv --port=${PORT}", proxy: "http://localhost:${PORT}/v1/"}
        """
    first = parse(text)
    assert {mid: m.port for mid, m in first.models.items()} == {
        "zeta": 7000, "fixed": None, "alpha": 7001, "beta": 7002}
    assert first.models["alpha"].cmd == ("srv", "--port", "7001")
    assert first.models["beta"].proxy == "http://localhost:7002/v1"
    assert parse(text) == first
    grown = parse(textwrap.dedent(text) + '  omega: {cmd: "srv --port ${PORT}"}\n')
    assert {mid: m.port for mid, m in grown.models.items()} == {
        "zeta": 7000, "fixed": None, "alpha": 7001, "beta": 7002, "omega": 7003}


def test_cmd_comments_and_folded_text() -> None:
    config = parse("""\
        models:
          m:
            cmd: |
              # leading comment
              server --port ${PORT}
                # indented comment with ${nothing}
              --flag "two words"
            cmdStop: |
              # stop it
              /bin/stop ${PID} ${MODEL_ID}
        """)
    assert config.models["m"].cmd == ("server", "--port", "5800", "--flag", "two words")
    assert config.models["m"].cmd_stop == ("/bin/stop", "${PID}", "m")


def test_health_check_timeout_is_not_clamped_and_check_endpoint_is_normalised() -> None:
    config = parse("""\
        healthCheckTimeout: 2.5
        models:
          a: {cmd: "s --port ${PORT}", checkEndpoint: "NONE"}
          b: {cmd: "s --port ${PORT}", checkEndpoint: "v1/models"}
        """)
    assert config.health_check_timeout == 2.5
    assert config.models["a"].check_endpoint is None
    assert config.models["b"].check_endpoint == "/v1/models"


def test_env_substitution_everywhere() -> None:
    config = parse("""\
        apiKeys: ["${env.K}"]
        macros: {bin: "${env.DIR}/server"}
        models:
          m:
            cmd: "${bin} --port ${PORT} --key ${env.K}"
            proxy: "http://${env.HOST}:${PORT}"
            env: ["TOKEN=${env.K}"]
            metadata: {where: "${env.DIR}"}
        """, environ={"K": "abc", "DIR": "/srv", "HOST": "10.0.0.2"})
    model = config.models["m"]
    assert config.api_keys == ("abc",)
    assert model.cmd == ("/srv/server", "--port", "5800", "--key", "abc")
    assert model.proxy == "http://10.0.0.2:5800"
    assert model.env == {"TOKEN": "abc"} and model.metadata == {"where": "/srv"}


def test_resolved_objects_are_immutable_and_json_friendly() -> None:
    config = load_config(FIXTURES / "macros_groups.yaml", environ=FIXTURE_ENV)
    model = config.models["org/llama:8b"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        model.ttl = 5  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.models["x"] = model  # type: ignore[index]
    with pytest.raises(TypeError):
        model.metadata["port"] = 1  # type: ignore[index]
    assert json.loads(json.dumps(model.metadata))["nested"] == ["org/llama:8b", 8192, 1]


def test_config_built_by_hand_gets_the_default_group() -> None:
    model = ModelConfig(id="m", cmd=("srv",), proxy="http://127.0.0.1:1", aliases=("alias",))
    config = Config(models={"m": model})
    assert config.group_of("m") == GroupConfig(DEFAULT_GROUP, members=("m",))
    assert config.resolve("alias") == "m"
    with pytest.raises(KeyError):
        config.group_of("other")


def test_json_schema_uses_the_keys_users_write() -> None:
    schema = json_schema()
    props = schema["properties"]
    assert {"healthCheckTimeout", "globalTTL", "startPort", "apiKeys", "models",
            "defaultModel", "maxRequestBodyMB"} <= set(props)
    assert schema["required"] == ["models"]
    model = next(d for d in schema["$defs"].values() if d.get("title") == "model")
    assert model["required"] == ["cmd"] and "checkEndpoint" in model["properties"]
    assert model["additionalProperties"] is False


# --------------------------------------------------------------------------- llama-swap files
# Whole files in llama-swap's format, written for these tests in the shapes of llama-swap's own
# examples (tests/test_llama_swap_real.py, -m compat, checks those real files the same way).


def test_llama_swap_docker_style_loads_with_notices() -> None:
    file = FIXTURES / "llamaswap_docker_style.yaml"
    config = load_config(file, environ={})
    assert list(config.models) == ["tinychat-1.5", "minichat", "painter"]
    assert config.health_check_timeout == 240.0
    assert {m.proxy for m in config.models.values()} == {"http://127.0.0.1:8800"}
    # painter has neither proxy nor ${PORT}: the port its cmd listens on is used, with a notice
    assert config.models["painter"].port is None
    assert config.models["painter"].cmd[1:3] == ("--listen-port", "8800")
    assert config.models["painter"].check_endpoint == "/"
    assert config.resolve("sketch-2.5") == config.resolve("painter.large") == "painter"
    assert config.notices == (
        f"{file}:6: logRequests: {UI_ONLY}",
        f"{file}:24: models.painter: {guessed_port_notice('http://127.0.0.1:8800')}")


def test_llama_swap_unified_style_loads_with_notices() -> None:
    config = load_config(FIXTURES / "llamaswap_unified_style.yaml", environ={})
    assert {mid: m.port for mid, m in config.models.items()} == {
        "chat": 5800, "transcribe": 5801, "speech": 5802, "draw": None}
    assert config.models["transcribe"].cmd[-2:] == ("--inference-path", "")
    assert config.models["transcribe"].check_endpoint == "/v1/audio/transcriptions/"
    speech = config.models["speech"]  # a comment line and backslash continuations
    assert speech.cmd == ("tts-server", "--voices", "/data/voices.json", "--port", "5802")
    assert speech.cmd_stop == ("kill", "-INT", "${PID}")
    assert config.models["draw"].proxy == "http://127.0.0.1:8801"
    assert config.models["chat"].aliases == ("chat-small", "chat-default")
    assert config.resolve("chat-default") == "chat"
    assert config.groups == (GroupConfig("audio", False, False, False, ("transcribe", "speech")),
                             GroupConfig(DEFAULT_GROUP, members=("chat", "draw")))
    assert [n.split(": ", 2)[1:] for n in config.notices] == [
        ["logRequests", UI_ONLY],
        ["models.chat.aliases[1]", "alias name/description/unlisted are accepted; swapproxy "
                                   "lists an alias like its model"],
        ["models.draw", guessed_port_notice("http://127.0.0.1:8801")]]


# every key of the full-style fixture that swapproxy does not implement yet: none, since peers
# (the scale-out issue) landed after the matrix router and scheduler priorities
FULL_STYLE_UNSUPPORTED: list[tuple[int, str]] = []
# the mistakes it makes on purpose, as llama-swap's full example does: names that are not
# models (a selector's, or none at all; a peer's model, such as cloud/some-model, is one now),
# and a model with neither proxy nor port
FULL_STYLE_MISTAKES = [
    (54, "profiles.writing.pins.review-model", "'ghost-model' is not a model id, alias, selector or peer model"),
    (62, "selectors.any-thinker.targets[1]", "'ghost-model' is not a model id, alias or peer model"),
    (76, "selectors.pool.targets[1]", "'phantom-a' is not a model id, alias or peer model"),
    (77, "selectors.pool.targets[2]", "'phantom-b' is not a model id, alias or peer model"),
    (151, "models.hidden-helper", "proxy is required when cmd does not use ${PORT}"),
    (168, "hooks.on_startup.preload[0]", "'pool' is not a model id or alias (it is a selector"),
    (179, "routing.router.settings.groups.solo.members[0]", "'pool' is not a model id"),
    (180, "routing.router.settings.groups.solo.members[1]", "'ghost-model' is not a model id"),
    (186, "routing.router.settings.groups.pair.members[1]", "'phantom-a' is not a model id"),
    (187, "routing.router.settings.groups.pair.members[2]", "'phantom-b' is not a model id"),
    (193, "routing.router.settings.groups.pinned.members[0]", "'pinned-a' is not a model id"),
    (194, "routing.router.settings.groups.pinned.members[1]", "'pinned-b' is not a model id"),
    (195, "routing.router.settings.groups.pinned.members[2]", "'pinned-c' is not a model id"),
    (215, "routing.scheduler.settings.fifo.priority.ghost-model", "'ghost-model' is not a model id or alias"),
]


def test_llama_swap_full_style_reports_only_its_own_mistakes() -> None:
    assert_refused(FIXTURES / "llamaswap_full_style.yaml", FULL_STYLE_ENV,
                   FULL_STYLE_UNSUPPORTED, FULL_STYLE_MISTAKES)


def test_llama_swap_full_style_rest_resolves() -> None:
    """Everything in the full-style fixture that swapproxy does support resolves."""
    text = supported_part(FIXTURES / "llamaswap_full_style.yaml",
                          groups={"pair": ["boxed-llama"]}, no_port="hidden-helper",
                          targets={"any-thinker": ["thinker-70b"], "pool": ["boxed-llama"]},
                          drop_pins={"writing": ["review-model"]})
    config = parse_config(text, environ=FULL_STYLE_ENV)

    model = config.models["thinker-70b"]
    assert model.cmd == ("/opt/llama/build-b4500/bin/llama-server", "--port", "12000",
                         "--model", "/data/thinker-70b-Q4_K_M.gguf", "--ctx-size", "32768",
                         "--temperature", "0.6")
    assert (model.port, model.proxy, model.check_endpoint) == (
        12000, "http://127.0.0.1:8990", "/ready")
    assert model.metadata == {
        "port": 12000, "temperature": 0.6,
        "summary": "thinker-70b listens on 12000 at temp 0.6, with 32768 tokens",
        "numbers": (7, 2.5, "lists take macros too: thinker-70b"),
        "nested": {"x": "7", "y": 3, "z": (0.6, True, "id=thinker-70b")}}
    assert model.filters.strip_params == ("top_k", "min_p", "typical_p")
    assert model.filters.set_params == {"top_k": 40, "min_p": 0.05}
    assert (model.ttl, model.unload_timeout, model.concurrency_limit) == (300.0, 20.0, 10)
    assert (model.connect_timeout, model.response_header_timeout) == (12.0, 90.0)
    assert model.send_loading_state is False and config.send_loading_state is True
    assert model.env == {"CUDA_VISIBLE_DEVICES": "1,0"}
    # each setParamsByID name but the model's own id becomes an alias, after the explicit ones
    assert model.aliases == ("gpt-4.1", "thinker-70b:fast")
    assert model.filters.set_params_by_id == {
        "thinker-70b": {"chat_template_kwargs": {"enable_thinking": True}},
        "thinker-70b:fast": {"chat_template_kwargs": {"enable_thinking": False}}}
    assert model.ignore_websockets is True and config.models["boxed-llama"].ignore_websockets is False
    assert [p.pattern for p in config.upstream_ignore_paths] == [r".*\.(svg|webp|map|woff2?)$",
                                                                 r"^\/socket$|^\/api\/queue$"]
    warm, pin, spill = config.selectors.values()
    assert (warm.id, warm.strategy, warm.targets, warm.name, warm.metadata) == (
        "any-thinker", "warm", ("thinker-70b",), "Any thinker", {"purpose": "reasoning"})
    assert (pin.id, pin.strategy, spill.strategy, spill.spillover) == ("review-model", "pin", "spillover", 2)
    assert pin.target_ids == ("thinker-70b", "cloud/some-model")  # a peer's model, by its full name
    lab, cloud = config.peers.values()
    assert (lab.id, lab.proxy, lab.models, lab.api_key) == (
        "lab-box", "http://10.0.0.42:8080", ("small-model", "embeddings/e5"), None)
    assert (lab.connect_timeout, lab.response_header_timeout) == (30.0, 60.0)  # llama-swap's peer defaults
    assert (cloud.proxy, cloud.api_key, cloud.models) == ("https://api.example.com/v1", "peer-key",
                                                          ("some-model", "other-model"))
    assert (cloud.connect_timeout, cloud.response_header_timeout) == (10.0, 30.0)
    assert cloud.filters.strip_params == ("top_k",)
    assert cloud.filters.set_params == {"provider": {"data_collection": "deny", "zdr": True}}
    assert config.peer_route("cloud/some-model") == config.peer_route("some-model")
    assert config.peer_route("embeddings/e5") is not None and config.resolve("small-model") is None
    assert config.profiles["writing"].pins == {"draft-model": "thinker-70b", "illustrate": ""}
    assert model.use_model_name == "vendor/thinker-70B" and model.name == "Thinker 70B"
    assert model.description == "A large reasoning model"
    assert model.capabilities == {"in": ("text", "image"), "out": ("text",), "tools": True,
                                  "reranker": False, "context": 32768}
    boxed = config.models["boxed-llama"]
    assert boxed.port == 12001 and boxed.proxy == "http://127.0.0.1:12001"
    assert boxed.cmd_stop == ("podman", "stop", "boxed-llama")
    assert boxed.cmd[:6] == ("podman", "run", "--name", "boxed-llama", "--rm", "-p")
    assert boxed.cmd[-2:] == ("--model", "/models/Small Coder Q4.gguf")
    helper = config.models["hidden-helper"]
    assert helper.unlisted is True and helper.port is None
    assert helper.cmd == ("helper-daemon", "--root", "/srv/weights", "--verbose")
    assert config.health_check_timeout == 400.0 and config.start_port == 12000
    assert (config.log_level, config.log_to_stdout) == ("debug", "both")
    assert config.include_aliases_in_list is True
    assert (config.global_ttl, config.unload_timeout) == (0.0, 15.0)
    assert config.api_keys == ("sk-fixture-one", "sk-fixture-two-9f8e7d6c5b4a", "key-a", "key-b")
    assert config.groups == (GroupConfig("pair", False, False, False, ("boxed-llama",)),
                             GroupConfig(DEFAULT_GROUP, members=("thinker-70b", "hidden-helper")))
    keys = [n.split(": ")[1] for n in config.notices]
    assert keys == ["logTimeFormat", "ui",
                    "models.thinker-70b.timeouts.keepalive",
                    "models.thinker-70b.timeouts.tlsHandshake",
                    "models.thinker-70b.timeouts.idleConn",
                    "peers.cloud.timeouts.keepalive", "peers.cloud.timeouts.tlsHandshake",
                    "peers.cloud.timeouts.idleConn"]


# --------------------------------------------------------------------------- problems


def test_typo_names_file_line_path_and_suggestion(tmp_path: Path) -> None:
    file = tmp_path / "config.yaml"
    file.write_text("logLevel: info\nhelthCheckTimeout: 30\nmodels:\n"
                    "  m:\n    cmd: srv --port ${PORT}\n    tll: 5\n")
    with pytest.raises(ConfigError) as info:
        load_config(file, environ={})
    assert str(info.value) == (
        f"{file}:2: helthCheckTimeout: unknown key 'helthCheckTimeout'; "
        f"did you mean 'healthCheckTimeout'?\n"
        f"{file}:6: models.m.tll: unknown key 'tll'; did you mean 'ttl'?")


def test_several_problems_are_reported_at_once() -> None:
    found = problems("""\
        startPort: many
        models:
          a:
            cmd: "srv --port ${PORT} ${foo}"
            aliases: [shared]
            ttl: soon
          b:
            cmd: "srv --port ${PORT}"
            aliases: [shared]
            concurency: 3
        """)
    assert where(found) == [(1, "startPort"), (4, "models.a.cmd"), (6, "models.a.ttl"),
                            (9, "models.b.aliases[0]"), (10, "models.b.concurency")]
    assert "valid integer" in found[0].message and "'many'" in found[0].message
    assert found[1].message == "unknown macro '${foo}'"
    assert found[3].message == "alias 'shared' is already used by model 'a'"
    assert found[4].message == "unknown key 'concurency'; did you mean 'concurrencyLimit'?"


def test_unknown_macro_in_field_and_in_macro() -> None:
    found = problems("""\
        macros:
          args: "--ctx ${ctx}"
          typo: "${nope}"
          ctx: 10
        models:
          m:
            cmd: "srv --port ${PORT} ${args} ${typo} ${foo}"
            metadata: {x: "${missing}"}
        """)
    assert [(p.line, p.key_path, p.message) for p in found] == [
        (2, "macros.args", "'${ctx}' is defined after 'args'; a macro can only use macros "
                           "defined before it"),
        (3, "macros.typo", "unknown macro '${nope}'"),
        (7, "models.m.cmd", "unknown macro '${foo}'"),
        (8, "models.m.metadata.x", "unknown macro '${missing}'")]


def test_unset_environment_variable_is_named() -> None:
    found = problems("""\
        models:
          m:
            cmd: "srv --port ${PORT}"
            env: ["TOKEN=${env.MY_TOKEN}"]
        """)
    assert [str(p) for p in found] == [
        "t.yaml:4: models.m.env[0]: environment variable 'MY_TOKEN' is not set "
        "(used as ${env.MY_TOKEN})"]


def test_pid_is_only_allowed_in_cmd_stop() -> None:
    found = problems("""\
        models:
          m:
            cmd: "srv --port ${PORT} --parent ${PID}"
            cmdStop: "kill ${PID}"
            name: "pid ${PID}"
        """)
    assert [(p.line, p.key_path, p.message) for p in found] == [
        (3, "models.m.cmd", "${PID} is only available in cmdStop"),
        (5, "models.m.name", "${PID} is only available in cmdStop")]


def test_duplicate_alias_and_alias_equal_to_a_model_id() -> None:
    found = problems("""\
        models:
          a: {cmd: "s --port ${PORT}", aliases: [x, b]}
          b: {cmd: "s --port ${PORT}", aliases: [x]}
        """)
    assert [(p.line, p.message) for p in found] == [
        (2, "alias 'b' is also a model id"), (3, "alias 'x' is already used by model 'a'")]


def test_port_and_proxy_rules() -> None:
    found = problems("""\
        models:
          fixed: {cmd: "srv --bind 0.0.0.0:8080"}
          proxyonly: {cmd: "srv", proxy: "http://127.0.0.1:${PORT}"}
          meta: {cmd: "srv", proxy: "http://h:1", metadata: {p: "${PORT}"}}
          bad: {cmd: "srv --port ${PORT}", proxy: "127.0.0.1:${PORT}"}
        """)
    assert [(p.line, p.key_path, p.message) for p in found] == [
        (2, "models.fixed", "proxy is required when cmd does not use ${PORT}"),
        (3, "models.proxyonly.proxy",
         "proxy uses ${PORT} but cmd does not; ${PORT} is only assigned when cmd uses it"),
        (4, "models.meta.metadata.p", "${PORT} is only available when cmd uses ${PORT}"),
        (5, "models.bad.proxy", "proxy must be an http(s):// URL (got '127.0.0.1:5800')")]


def test_macro_definition_rules() -> None:
    found = problems("""\
        macros:
          PORT: 1
          "bad name": x
          self: "a ${self}"
          listy: [1, 2]
        models:
          m:
            macros: {MODEL_ID: x}
            cmd: "srv --port ${PORT}"
        """)
    assert [(p.line, p.message) for p in found] == [
        (2, "'PORT' is reserved and cannot be defined as a macro"),
        (3, "a macro name must match ^[A-Za-z0-9_-]+$"),
        (4, "macro 'self' refers to itself"),
        (5, "a macro value must be a string, number or boolean (got list)"),
        (8, "'MODEL_ID' is reserved and cannot be defined as a macro")]
    long_name = "x" * 64
    assert problems(f'macros: {{{long_name}: 1}}\nmodels: {{m: {{cmd: "s --port ${{PORT}}"}}}}'
                    )[0].message == "a macro name must be shorter than 64 characters"


def test_group_membership_rules() -> None:
    found = problems("""\
        groups:
          one: {members: [a, ghost, a]}
          two: {members: [a, alias-b]}
        models:
          a: {cmd: "s --port ${PORT}"}
          b: {cmd: "s --port ${PORT}", aliases: [alias-b]}
        """)
    assert [(p.line, p.key_path, p.message) for p in found] == [
        (2, "groups.one.members[1]", "'ghost' is not a model id defined in models"),
        (2, "groups.one.members[2]", "'a' is listed twice in this group"),
        (3, "groups.two.members[0]", "'a' is already in group 'one'; a model belongs to one group"),
        (3, "groups.two.members[1]",
         "'alias-b' is not a model id defined in models ('alias-b' is an alias of 'b')")]


def test_preload_default_model_api_keys_and_env_entries() -> None:
    found = problems("""\
        defaultModel: nobody
        apiKeys: ["", "has space"]
        hooks: {on_startup: {preload: [a, ghost]}}
        models:
          a:
            cmd: "s --port ${PORT}"
            env: ["NOEQUALS", "=x"]
        """)
    assert [(p.line, p.key_path, p.message) for p in found] == [
        (1, "defaultModel", "'nobody' is not a model id or alias"),
        (2, "apiKeys[0]", "an API key must be non-empty, without whitespace"),
        (2, "apiKeys[1]", "an API key must be non-empty, without whitespace"),
        (3, "hooks.on_startup.preload[1]", "'ghost' is not a model id or alias"),
        (7, "models.a.env[0]", "an env entry must look like NAME=value (got 'NOEQUALS')"),
        (7, "models.a.env[1]", "an env entry must look like NAME=value (got '=x')")]


def test_peers_are_accepted_in_a_small_config() -> None:
    found = problems("""\
        peers: {}
        routing:
          router: {use: matrix}
          scheduler: {settings: {fifo: {priority: {m: 1}}}}
        models:
          m:
            cmd: "s --port ${PORT}"
            compat: {ignoreWebsockets: true}
        """)
    assert [(p.line, p.key_path, p.message) for p in found] == [
        (3, "routing.router.use", "routing.router.use is 'matrix' but routing.router.settings.matrix is not set")]


def test_schema_type_errors_carry_lines() -> None:
    found = problems("""\
        logLevel: loud
        models:
          m:
            cmd: ["srv"]
            ttl: -5
          n:
            proxy: http://h:1
          o: just a string
        """)
    assert where(found) == [(1, "logLevel"), (4, "models.m.cmd"), (5, "models.m.ttl"),
                            (6, "models.n.cmd"), (8, "models.o")]
    assert "'debug', 'info', 'warn' or 'error'" in found[0].message
    assert found[1].message == "expected a string (got ['srv'])"
    assert found[3].message == "required key is missing"
    assert found[4].message == "expected a mapping (got 'just a string')"


def test_yaml_syntax_error_and_bad_top_level(tmp_path: Path) -> None:
    found = problems("models:\n  m:\n    cmd: [unclosed\n")
    assert len(found) == 1 and found[0].key_path == "(yaml)" and found[0].line == 4
    assert found[0].message.startswith("invalid YAML:")
    assert [str(p) for p in problems("- a\n- b\n")] == [
        "t.yaml:1: (top): the top level must be a mapping of settings, not list"]
    assert problems("")[0].message == "the config is empty"
    assert problems("models: {}\n")[0].message == "no models are defined"
    missing = tmp_path / "absent.yaml"
    with pytest.raises(ConfigError, match=r"absent\.yaml:0: \(file\): cannot read the config"):
        load_config(missing)


def test_duplicate_yaml_key_is_reported() -> None:
    found = problems("""\
        models:
          m: {cmd: "s --port ${PORT}"}
          m: {cmd: "t --port ${PORT}"}
        """)
    assert [str(p) for p in found] == ["t.yaml:3: models.m: duplicate key; first on line 2"]


def test_capabilities_are_checked_after_macros() -> None:
    found = problems("""\
        models:
          m:
            cmd: "s --port ${PORT}"
            capabilities: {in: [text, smell], tool: true}
        """)
    assert where(found) == [(4, "models.m.capabilities.in[1]"), (4, "models.m.capabilities.tool")]
    assert found[1].message == "unknown key 'tool'; did you mean 'tools'?"


def test_newer_llama_swap_spellings_load() -> None:
    """Alias mappings, the older strip_params and timeouts.expectContinue are llama-swap's too."""
    config = parse_config(
        "models:\n"
        "  m:\n"
        "    cmd: x --port ${PORT}\n"
        "    aliases:\n"
        "      - plain\n"
        "      - {id: gpt-4o-mini, name: Mini, unlisted: false}\n"
        "    filters:\n"
        "      strip_params: 'temperature, top_p'\n"
        "    timeouts:\n"
        "      expectContinue: 1\n",
        file="new.yaml",
    )
    model = config.models["m"]
    assert model.aliases == ("plain", "gpt-4o-mini")
    assert config.resolve("gpt-4o-mini") == "m"
    assert model.filters.strip_params == ("temperature", "top_p")
    assert any(n.startswith("new.yaml:8: models.m.filters.strip_params:") for n in config.notices)
    assert any(n.startswith("new.yaml:10: models.m.timeouts.expectContinue:") for n in config.notices)
    assert any(n.startswith("new.yaml:6: models.m.aliases[1]:") for n in config.notices)
