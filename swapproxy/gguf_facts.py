"""The facts of a GGUF file that size a model, read with llama.cpp's own ``gguf`` package.

Run as a short-lived helper process (``python -m swapproxy.gguf_facts FILE...``,
printing one JSON object of facts per file): the reader pulls in numpy and
parses the whole tokenizer, which swapproxy's own process should never carry.
:mod:`swapproxy.estimate` turns the facts, with a command's options, into a
footprint; :func:`read_facts` runs this helper and returns its answer.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["facts_of", "read_facts", "read_facts_async", "main"]

#: Architectures whose GGUF does not say which layers use a sliding window: every Nth
#: layer attends to the whole context, the others to the window (llama.cpp's defaults).
_SWA_EVERY = {"gemma2": 2, "gemma3": 6, "gemma3n": 5, "cohere2": 4, "gpt-oss": 2}


def _value(fields: Any, key: str, default: Any = None) -> Any:
    field = fields.get(key)
    if field is None:
        return default
    value = field.contents()
    return value


def _per_layer(value: Any, n_layer: int) -> list[int]:
    if isinstance(value, list):
        return [int(v) for v in value[:n_layer]] + [int(value[-1])] * max(0, n_layer - len(value))
    return [int(value)] * n_layer


def facts_of(path: str) -> dict[str, Any]:
    """Architecture, layer count and shapes, windowed layers, vocabulary size, weight bytes."""
    from gguf import GGUFReader  # numpy comes with it: only in this helper process

    reader = GGUFReader(path)
    fields = reader.fields
    arch = str(_value(fields, "general.architecture", "llama"))
    n_layer = int(_value(fields, f"{arch}.block_count", 0))
    n_embd = int(_value(fields, f"{arch}.embedding_length", 0))
    n_head = _per_layer(_value(fields, f"{arch}.attention.head_count", 1), n_layer)
    n_head_kv = _per_layer(_value(fields, f"{arch}.attention.head_count_kv", n_head), n_layer)
    head_dim = n_embd // max(max(n_head), 1)
    window = int(_value(fields, f"{arch}.attention.sliding_window", 0) or 0)
    pattern = _value(fields, f"{arch}.attention.sliding_window_pattern")
    if isinstance(pattern, list):  # one flag per layer: true = windowed
        windowed = [bool(v) for v in pattern[:n_layer]]
    else:
        every = int(pattern) if isinstance(pattern, int) and pattern > 0 else _SWA_EVERY.get(arch, 0)
        windowed = [bool(window and every and (i + 1) % every) for i in range(n_layer)]
    tokens = fields.get("tokenizer.ggml.tokens")
    return {
        "file": path,
        "arch": arch,
        "name": _value(fields, "general.name"),
        "size_label": _value(fields, "general.size_label"),
        "file_type": _value(fields, "general.file_type"),
        "n_layer": n_layer,
        "n_embd": n_embd,
        "n_ff": max(_per_layer(_value(fields, f"{arch}.feed_forward_length", 4 * n_embd), n_layer) or [0]),
        "n_head_kv": n_head_kv,
        "key_length": int(_value(fields, f"{arch}.attention.key_length", head_dim)),
        "value_length": int(_value(fields, f"{arch}.attention.value_length", head_dim)),
        "n_swa": window,
        "windowed": windowed,
        "n_ctx_train": int(_value(fields, f"{arch}.context_length", 0)),
        "n_vocab": len(tokens.data) if tokens is not None else 0,
        "weights": int(sum(int(t.n_bytes) for t in reader.tensors)),
        "parameters": int(sum(int(t.n_elements) for t in reader.tensors)),
    }


def _argv(paths: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "swapproxy.gguf_facts", *paths]


def _answers(paths: Sequence[str], stdout: str, stderr: str, code: int | None) -> dict[str, dict[str, Any] | str]:
    out: dict[str, dict[str, Any] | str] = {}
    for line in stdout.splitlines():
        try:
            item = json.loads(line)
        except ValueError:
            continue
        out[item["file"]] = item.get("facts") or str(item.get("error"))
    for path in paths:
        out.setdefault(path, stderr.strip()[-300:] or f"the GGUF reader exited with {code}")
    return out


def read_facts(paths: Sequence[str], timeout: float = 300.0) -> dict[str, dict[str, Any] | str]:
    """Facts per file, read in a helper process; a file that cannot be read maps to why (a string)."""
    if not paths:
        return {}
    try:
        done = subprocess.run(_argv(paths), capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {path: f"cannot run the GGUF reader: {exc}" for path in paths}
    return _answers(paths, done.stdout, done.stderr, done.returncode)


async def read_facts_async(paths: Sequence[str], timeout: float = 300.0) -> dict[str, dict[str, Any] | str]:
    """:func:`read_facts` without blocking the event loop; cancelled, it kills the helper at once."""
    if not paths:
        return {}
    try:
        proc = await asyncio.create_subprocess_exec(*_argv(paths), stdin=asyncio.subprocess.DEVNULL,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    except OSError as exc:
        return {path: f"cannot run the GGUF reader: {exc}" for path in paths}
    try:
        stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout)
    except (asyncio.TimeoutError, asyncio.CancelledError) as exc:
        proc.kill()
        await proc.wait()
        if isinstance(exc, asyncio.CancelledError):
            raise
        return {path: f"the GGUF reader took longer than {timeout:g}s" for path in paths}
    return _answers(paths, stdout.decode(errors="replace"), stderr.decode(errors="replace"), proc.returncode)


def main(argv: Sequence[str] | None = None) -> int:
    """One JSON line per file: ``{"file", "facts"}`` or ``{"file", "error"}``."""
    for path in sys.argv[1:] if argv is None else argv:
        try:
            print(json.dumps({"file": path, "facts": facts_of(path)}), flush=True)
        except ImportError:
            print(json.dumps({"file": path, "error": "the gguf package is not installed"}), flush=True)
        except Exception as exc:  # a broken or foreign file: say so, go on with the next
            print(json.dumps({"file": path, "error": f"{type(exc).__name__}: {exc}"}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
