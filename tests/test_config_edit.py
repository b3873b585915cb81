"""Edits of a config file's text (config/edit.py).

Pure functions: text in, text out. An edit must leave every line it does not concern byte
for byte as it was — comments, blank lines, quoting, flow lists — and the result must load
as the same config plus the change. The whole test files of tests/configs/ are edited
(llama-swap's own shapes), and the result is loaded again by the real loader.
"""

from __future__ import annotations

import difflib

import pytest

from support import ROOT
from swapproxy.config import parse_config
from swapproxy.config.edit import EditError, model_entry, model_ids, remove_model, set_model, update_model

CONFIG = """\
# swapproxy config: the comments must survive every edit
startPort: 5800          # first ${PORT}
macros:
  server: "llama-server --port ${PORT}"

models:
  # the chat model: keep this comment
  chat:
    cmd: ${server} -m /models/chat.gguf   # a trailing comment
    aliases: [gpt-4o, "gpt-4o-mini"]
    ttl: 300

  embed:
    name: 'Embeddings'
    cmd: |
      ${server}
      --embeddings
    aliases:
      - text-embedding
# groups come last
groups:
  main: {members: [chat, embed], swap: false}
"""


def changed_lines(before: str, after: str) -> list[str]:
    """The lines removed (-) and added (+) between two texts."""
    return [line for line in difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="", n=0)
            if line[:1] in "+-" and not line.startswith(("+++", "---"))]


def test_a_new_model_goes_after_the_last_one_and_nothing_else_moves() -> None:
    text = set_model(CONFIG, "coder", {"cmd": "${server} -m /models/coder.gguf", "aliases": ["code"], "ttl": 60})
    assert changed_lines(CONFIG, text) == [
        "+  coder:", "+    cmd: ${server} -m /models/coder.gguf", "+    aliases:", "+      - code", "+    ttl: 60"]
    assert text.index("coder:") < text.index("# groups come last")  # still inside models, before the comment
    config = parse_config(text)
    assert list(config.models) == ["chat", "embed", "coder"]
    assert config.models["coder"].cmd == ("llama-server", "--port", "5802", "-m", "/models/coder.gguf")


def test_an_update_changes_its_keys_only_and_keeps_the_entry_comments() -> None:
    text = update_model(CONFIG, "chat", {"ttl": 30, "description": "now with a description", "aliases": None})
    assert changed_lines(CONFIG, text) == [
        "-    aliases: [gpt-4o, \"gpt-4o-mini\"]", "-    ttl: 300", "+    ttl: 30", "+    description: now with a description"]
    assert "# a trailing comment" in text and "# the chat model: keep this comment" in text
    assert parse_config(text).models["chat"].ttl == 30


def test_a_removal_takes_the_entry_lines_only() -> None:
    text = remove_model(CONFIG, "chat")
    assert "chat:" not in text and "# the chat model: keep this comment" in text
    assert all(line.startswith("-") for line in changed_lines(CONFIG, text))
    assert model_ids(text) == ["embed"]
    assert model_entry(CONFIG, "embed") == {"name": "Embeddings", "cmd": "${server}\n--embeddings\n",
                                            "aliases": ["text-embedding"]}


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "tests" / "configs").glob("*.yaml")))
def test_llama_swap_shaped_files_keep_every_other_line(name: str) -> None:
    original = (ROOT / "tests" / "configs" / name).read_text()
    ids = model_ids(original)
    text = set_model(original, "added-by-api", {"cmd": "llama-server --port ${PORT}", "ttl": 5})
    text = update_model(text, ids[0], {"unlisted": True})
    removed = [line for line in changed_lines(original, text) if line.startswith("-")]
    assert removed == [], removed  # only additions: nothing the operator wrote was touched
    assert model_ids(text) == [*ids, "added-by-api"]
    assert model_entry(text, ids[0])["unlisted"] is True


def test_json_and_empty_files_are_edited_too() -> None:
    json_text = '{"models": {"a": {"cmd": "x --port ${PORT}"}}}\n'
    assert model_ids(set_model(json_text, "b", {"cmd": "y --port ${PORT}"})) == ["a", "b"]
    assert model_ids(set_model("", "b", {"cmd": "y"})) == ["b"]
    assert set_model("startPort: 5\nmodels:   # none yet\n", "b", {"cmd": "y"}) == (
        "startPort: 5\nmodels:   # none yet\n  b:\n    cmd: y\n")
    with pytest.raises(EditError, match="top level"):
        set_model("- a list\n", "b", {"cmd": "y"})
    with pytest.raises(EditError, match="not defined"):
        update_model(CONFIG, "nope", {"ttl": 1})


def test_the_example_config_keeps_its_comments() -> None:
    original = (ROOT / "config.example.yaml").read_text()
    text = update_model(original, "gemma-chat", {"ttl": 600})
    assert changed_lines(original, text) == ["-    ttl: 300", "+    ttl: 600"]
