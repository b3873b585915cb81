"""Secrets stay out of what swapproxy shows (issue 14, item 4): the spawning line, /logs, events, stdout.

A model's command line holds ``${env.X}`` values, an upstream ``--api-key``, a ``--hf-token``,
even one of swapproxy's own keys; the "spawning ..." line used to log it whole. The rules
themselves (:mod:`swapproxy.redact`) first, then a real swapproxy whose secrets come from its
environment, checked everywhere a person can read its output.
"""

from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from support import FAKE, STATE_DIR, free_port_block, running_cli
from swapproxy.config import parse_config
from swapproxy.redact import REDACTED, Redactor, is_secret_name, redact_url


def test_flag_values_env_words_urls_and_known_secrets_are_hidden() -> None:
    shown = Redactor(["sk-configured-key"]).argv([
        "/opt/llama-server", "--api-key", "upstream-secret", "--hf-token=hf_abcdef", "-hft", "hf_short2",
        "--api-key-file", "/etc/llama/key", "--ssl-key-file", "./key.pem", "HF_TOKEN=hf_zzzz", "--port", "5800",
        "--alias", "x-sk-configured-key-y", "--no-auth", "http://user:pw@host:1/v1?token=abc&n=1",
        "--proxy=http://u:pw2@h/", "MAX_TOKENS=4096", "--n-predict", "64",
    ])
    for secret in ("upstream-secret", "hf_abcdef", "hf_short2", "hf_zzzz", "sk-configured-key", ":pw@", "abc&",
                   ":pw2@"):
        assert secret not in shown, (secret, shown)
    for kept in ("/opt/llama-server", "--api-key ***", "--api-key-file /etc/llama/key", "--ssl-key-file ./key.pem",
                 "--port 5800", "x-***-y", "--no-auth http", "n=1", "MAX_TOKENS=4096", "--n-predict 64"):
        assert kept in shown, (kept, shown)


def test_secret_names_and_short_values() -> None:
    assert all(is_secret_name(n) for n in ("HF_TOKEN", "OPENAI_API_KEY", "apiKey", "DB_PASSWORD", "MY_SECRET",
                                           "api-key", "hf-token", "AWS_SECRET_ACCESS_KEY"))
    assert not any(is_secret_name(n) for n in ("HOME", "PATH", "PWD", "KEYBOARD", "MAX_TOKENS", "tokenizer",
                                               "n-predict", "port"))
    # too short, digits only, booleans and paths are not searched for (they would match everywhere)
    r = Redactor(["abc", "1234", "true", "/models/x.gguf", "long-enough"])
    assert r.text("abc 1234 true /models/x.gguf long-enough") == f"abc 1234 true /models/x.gguf {REDACTED}"
    assert redact_url("http://127.0.0.1:5800") == "http://127.0.0.1:5800"
    assert redact_url("http://u:p@h:1/?api_key=k&sig=s") == f"http://u:{REDACTED}@h:1/?api_key={REDACTED}&sig={REDACTED}"


def test_the_loader_collects_secret_env_values() -> None:
    env = {"UPSTREAM_API_KEY": "up-key-1234", "MODEL_DIR": "/models", "HF_TOKEN": "hf_tok_5678"}
    config = parse_config(
        "models:\n  m:\n    cmd: srv --port ${PORT} --api-key ${env.UPSTREAM_API_KEY} -m ${env.MODEL_DIR}/x\n"
        "    env: ['HF_TOKEN=${env.HF_TOKEN}']\n", environ=env)
    assert config.env_secrets == ("up-key-1234", "hf_tok_5678")
    shown = Redactor.for_config(config).argv(config.models["m"].cmd)
    assert "up-key-1234" not in shown and "/models/x" in shown


def _get(port: int, path: str, key: str) -> str:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(request, timeout=30) as reply:
        if path.startswith("/api/events"):
            return reply.readline().decode()  # the snapshot: every model's status and recent log lines
        return reply.read().decode()


def test_secrets_never_reach_logs_events_or_stdout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secrets = {
        "ADMIN_PHRASE": "sk-swapproxy-own-4821",  # swapproxy's own key; its name says nothing, it is a key
        "UPSTREAM_API_KEY": "sk-upstream-7731",  # the model's apiKey, and the upstream's --api-key
        "HF_TOKEN": "hf_hidden_token_993",  # handed over as a NAME=value word
        "MY_SECRET": "zq8secretzq8",  # inside a word: the model's name, which the upstream prints
    }
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    cmd = (f"/usr/bin/env HF_TOKEN=${{env.HF_TOKEN}} ADMIN=${{env.ADMIN_PHRASE}} {sys.executable} {FAKE} "
           f"--port ${{PORT}} --model-name m-${{env.MY_SECRET}}-x --api-key ${{env.UPSTREAM_API_KEY}}")
    doc: dict[str, Any] = {
        "startPort": free_port_block(2), "stateDir": str(STATE_DIR), "logToStdout": "both",
        "apiKeys": ["${env.ADMIN_PHRASE}"],
        "models": {"m": {"cmd": cmd, "apiKey": "${env.UPSTREAM_API_KEY}"}},
    }
    key = secrets["ADMIN_PHRASE"]
    with running_cli(doc, tmp_path) as live:
        _get(live.port, "/upstream/m/load", key)
        body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{live.port}/v1/chat/completions", data=body,
                                         headers={"Authorization": f"Bearer {key}",
                                                  "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as reply:
            assert reply.status == 200
        shown = {path: _get(live.port, path, key) for path in ("/logs", "/api/events", "/running?details=1")}
        shown["stdout"] = live.log.read_text()
    for where, text in shown.items():
        for name, value in secrets.items():
            assert value not in text, (where, name)
    assert "spawning" in shown["/logs"] and "--api-key ***" in shown["/logs"], shown["/logs"]
    assert "m-***-x" in shown["/logs"], shown["/logs"]  # the upstream's own line, as it printed it
