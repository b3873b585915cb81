"""A llama-server model's memory footprint, estimated from its GGUF's facts and its command's options.

What llama-server allocates, as it reports it (measured against its own log on
gemma-3-270m; see the closing note of the scheduler issue for estimate vs RSS):

* weights: the tensors' bytes;
* KV cache: per layer, cells × KV heads × (key + value length) × the cache
  type's bytes per element. A full-attention layer has ``--ctx-size`` cells; a
  sliding-window layer ``min(ctx, parallel × window + ubatch)``, unless
  ``--swa-full``. ``--ctx-size 0`` (its default) means the model's trained context;
  ``--parallel`` defaults to 4 (llama-server's "auto");
* compute buffers: ``ubatch × 4 bytes × (2·n_ff + 8·n_embd)``, plus an attention
  mask of ``ubatch × 2 bytes`` per KV cell; the output buffer, ``parallel ×
  n_vocab × 4 bytes``;
* the process itself: 48 MiB plus 64 bytes per vocabulary entry on the host.

With GPU layers (``-ngl``, all by default when the machine has a GPU) the
weights of the offloaded layers, the KV cache and the compute buffers are on
the GPU and the host keeps the rest plus the GPU runtime (256 MiB). Split
across several GPUs, it is all counted on the first; declare ``memory`` per
device for anything this does not model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["LlamaOptions", "parse_options", "footprint", "KV_BYTES"]

MiB = 1 << 20
#: Bytes per element of each KV cache type (a block's bytes over its elements).
KV_BYTES = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32, "q5_1": 24 / 32, "q5_0": 22 / 32,
            "q4_1": 20 / 32, "q4_0": 18 / 32, "iq4_nl": 18 / 32}
_GPU_RUNTIME = 256 * MiB
_HOST_BASE = 48 * MiB

_VALUE_FLAGS = {
    "-m": "model", "--model": "model", "-c": "ctx", "--ctx-size": "ctx", "-np": "parallel", "--parallel": "parallel",
    "-ngl": "ngl", "--gpu-layers": "ngl", "--n-gpu-layers": "ngl", "-ctk": "ctk", "--cache-type-k": "ctk",
    "-ctv": "ctv", "--cache-type-v": "ctv", "-ub": "ubatch", "--ubatch-size": "ubatch",
    "-hf": "hf", "--hf-repo": "hf", "-mu": "url", "--model-url": "url",
}


@dataclass(frozen=True)
class LlamaOptions:
    """What of a llama-server command line sizes its memory."""

    model: str | None = None  # the GGUF path (-m); None: not a local file (-hf, a URL, a wrapper)
    ctx: int = 0  # 0: the model's trained context
    parallel: int = 4
    ngl: int | None = None  # None: llama-server's default (all layers, when there is a GPU)
    ctk: str = "f16"
    ctv: str = "f16"
    ubatch: int = 512
    swa_full: bool = False
    remote: bool = False  # -hf / --model-url: fetched, its size not known here


def parse_options(argv: Sequence[str]) -> LlamaOptions:
    """The sizing options of a llama-server command (``--flag value`` and ``--flag=value``)."""
    found: dict[str, Any] = {}
    args = list(argv)
    i = 0
    while i < len(args):
        flag, eq, inline = args[i].partition("=")
        key = _VALUE_FLAGS.get(flag)
        if flag == "--swa-full":
            found["swa_full"] = True
        elif key is not None:
            value = inline if eq else (args[i + 1] if i + 1 < len(args) else "")
            i += 0 if eq else 1
            found[key] = value
        i += 1
    opts: dict[str, Any] = {"remote": "hf" in found or "url" in found, "swa_full": found.get("swa_full", False)}
    if "model" in found:
        opts["model"] = found["model"]
    for key in ("ctx", "parallel", "ubatch"):
        if found.get(key, "").lstrip("-").isdigit():
            opts[key] = int(found[key])
    if found.get("ngl", "").lstrip("-").isdigit():
        opts["ngl"] = int(found["ngl"])
    elif found.get("ngl") in ("all", "auto"):
        opts["ngl"] = None
    for key in ("ctk", "ctv"):
        if found.get(key) in KV_BYTES:
            opts[key] = found[key]
    if opts.get("parallel", 4) <= 0:
        opts["parallel"] = 4  # -1 / 0: auto
    return LlamaOptions(**opts)


def footprint(facts: Mapping[str, Any], opts: LlamaOptions, *, gpu: bool) -> dict[str, int]:
    """Estimated bytes per device (``gpu0`` and/or ``host``) for a model with these ``facts`` and ``opts``."""
    n_layer = max(int(facts["n_layer"]), 1)
    ctx = opts.ctx if opts.ctx > 0 else int(facts["n_ctx_train"]) or 4096
    window_cells = min(ctx, opts.parallel * int(facts["n_swa"]) + opts.ubatch)
    windowed = list(facts.get("windowed") or [False] * n_layer)
    per_cell = [int(h) * (int(facts["key_length"]) * KV_BYTES[opts.ctk] + int(facts["value_length"]) *
                          KV_BYTES[opts.ctv]) for h in facts["n_head_kv"]]
    kv = sum(per_cell[i] * (window_cells if windowed[i] and not opts.swa_full else ctx) for i in range(n_layer))
    cells = ctx + (window_cells if any(windowed) and not opts.swa_full else ctx if any(windowed) else 0)
    compute = opts.ubatch * 4 * (2 * int(facts["n_ff"]) + 8 * int(facts["n_embd"])) + opts.ubatch * 2 * cells
    output = opts.parallel * int(facts["n_vocab"]) * 4
    process = _HOST_BASE + 64 * int(facts["n_vocab"])
    weights = int(facts["weights"])
    offloaded = 0 if not gpu else n_layer if opts.ngl is None else max(0, min(opts.ngl, n_layer + 1))
    if offloaded == 0:
        return {"host": int(weights + kv + compute + output + process)}
    share = min(offloaded, n_layer) / n_layer
    on_gpu = weights * share + kv + compute + output
    return {"gpu0": int(on_gpu), "host": int(weights * (1 - share) + process + _GPU_RUNTIME)}
