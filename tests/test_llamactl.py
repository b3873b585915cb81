"""llamactl's instance options as a model entry of the config (llamactl.py): pure, data in, data out.

The flags each option becomes are checked through the real loader: the ``cmd`` written must
split into exactly the argv llama-server is meant to get.
"""

from __future__ import annotations

import pytest

from swapproxy.config import parse_config
from swapproxy.llamactl import BodyError, entry_changes


def test_llamactl_options_become_llama_server_flags() -> None:
    binary = ("/opt/llama/llama-server",)
    keys, notices = entry_changes({"model": "/models/llama-2-7b.gguf"}, binary)
    assert keys == {"cmd": "/opt/llama/llama-server --model /models/llama-2-7b.gguf --host 127.0.0.1 --port ${PORT}"}
    assert notices == []
    keys, notices = entry_changes({"backend_type": "llama_cpp", "idle_timeout": 5, "auto_restart": True,
                                   "environment": {"CUDA_VISIBLE_DEVICES": "1"},
                                   "backend_options": {"m": "/m.gguf", "ctx_size": 4096, "flash_attn": True,
                                                       "temperature": 0.5, "override_tensor": ["a=CPU", "b=CPU"],
                                                       "port": 9000}}, binary)
    cmd = parse_config("models:\n  x:\n    cmd: |\n      " + keys["cmd"].replace("\n", "\n      ")).models["x"].cmd
    assert cmd[1:] == ("--model", "/m.gguf", "--ctx-size", "4096", "--flash-attn", "--temp", "0.5",
                       "--override-tensor", "a=CPU", "--override-tensor", "b=CPU", "--host", "127.0.0.1",
                       "--port", "5800")
    assert keys["ttl"] == 300 and keys["env"] == ["CUDA_VISIBLE_DEVICES=1"]
    assert any("auto_restart ignored" in n for n in notices) and any("port ignored" in n for n in notices)


def test_llamactl_options_change_an_existing_command_in_place() -> None:
    existing = {"cmd": "${server} -m /m.gguf -c 2048 --jinja --host 127.0.0.1 --port ${PORT}"}
    keys, _ = entry_changes({"ctx_size": 8192, "jinja": False, "ngl": 99, "ttl": None}, ("unused",), existing)
    assert keys == {"ttl": None, "cmd": "${server} -m /m.gguf --ctx-size 8192 --gpu-layers 99 --host 127.0.0.1 "
                                        "--port ${PORT}"}


def test_options_keep_a_multi_line_command_as_written() -> None:
    """Comment lines, indentation and backslashes stay; only the lines whose flags changed are new."""
    written = ("llama-server \\\n"
               "  # --flash-attn on  (off until the driver is fixed)\n"
               "  -m /models/x.gguf \\\n"
               "  -c 2048 \\\n"
               "  --jinja \\\n"
               "  --host 127.0.0.1 \\\n"
               "  --port ${PORT}\n")
    keys, _ = entry_changes({"ctx_size": 8192, "jinja": False, "ngl": 99}, ("unused",), {"cmd": written})
    assert keys["cmd"] == ("llama-server \\\n"
                           "  # --flash-attn on  (off until the driver is fixed)\n"
                           "  -m /models/x.gguf \\\n"
                           "  --ctx-size 8192 \\\n"
                           "  --gpu-layers 99 \\\n"
                           "  --host 127.0.0.1 \\\n"
                           "  --port ${PORT}\n")
    cmd = parse_config("models:\n  x:\n    cmd: |\n      " + keys["cmd"].replace("\n", "\n      ")).models["x"].cmd
    assert cmd == ("llama-server", "-m", "/models/x.gguf", "--ctx-size", "8192", "--gpu-layers", "99",
                   "--host", "127.0.0.1", "--port", "5800")
    # one flag per line, no backslashes (a YAML block): a new flag gets its own line, too
    keys, _ = entry_changes({"ngl": 99}, ("unused",), {"cmd": "llama-server\n  # keep me\n  -m /m.gguf\n  --port ${PORT}"})
    assert keys["cmd"] == "llama-server\n  # keep me\n  -m /m.gguf\n  --gpu-layers 99\n  --port ${PORT}"
    # a quote open across lines cannot be edited line by line: the command is written anew
    keys, _ = entry_changes({"ngl": 1}, ("unused",), {"cmd": "llama-server -m '/a\nb.gguf' --port ${PORT}"})
    assert keys["cmd"] == "llama-server -m '/a\nb.gguf' --gpu-layers 1 --port ${PORT}"


@pytest.mark.parametrize("body,key", [
    ([1], None), ({"cmd": "x", "model": "y"}, "cmd"), ({"backend_type": "vllm"}, "backend_type"),
    ({"ctxSize": 4096}, "ctxSize"), ({"ttl": 60}, "model"), ({"idle_timeout": "soon", "model": "m"}, "idle_timeout"),
    ({"environment": ["A=1"], "model": "m"}, "environment"), ({"backend_options": [1]}, "backend_options"),
])
def test_llamactl_bodies_that_cannot_be_read(body: object, key: str | None) -> None:
    with pytest.raises(BodyError) as err:
        entry_changes(body, ("llama-server",))
    assert err.value.key == key
