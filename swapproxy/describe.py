"""What a model's ``/v1/models`` entry says about the model itself: size, parameters, quantisation, context.

Pure functions over the facts of its GGUF file (:mod:`swapproxy.gguf_facts`, read
once and cached by :class:`~swapproxy.memory.MemoryModel`) and the context size
its running llama-server reported (:mod:`swapproxy.web.upstream_props`). Two
vocabularies, so that the clients of both find them:

* Open WebUI's model picker, for a connection of type *llama.cpp* (or LM Studio),
  reads ``params_string`` (else ``details.parameter_size``), ``quantization.name``
  (else ``details.quantization_level``) and ``size_bytes`` (else ``size``) — see its
  ``src/lib/components/chat/ModelSelector/ModelItem.svelte`` (0.12.4). These are LM
  Studio's names, and go at the top level of the entry.
* llama-server's own ``/v1/models`` has ``meta``: ``n_params``, ``size`` (weight
  bytes), ``n_ctx_train``, ``n_ctx`` (the context it runs with, once loaded).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["QUANT_NAMES", "describe", "params_string"]

#: llama.cpp's ``general.file_type`` (``enum llama_ftype``) → the usual quantisation name.
QUANT_NAMES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K", 11: "Q3_K_S",
    12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K",
    19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL",
    26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0",
    37: "TQ2_0", 38: "MXFP4_MOE",
}


def params_string(facts: Mapping[str, Any]) -> str | None:
    """The parameter count as people write it: the file's own ``size_label`` ("270M", "8x7B"),
    else counted from its tensors ("7.2B", "268M")."""
    label = facts.get("size_label")
    if isinstance(label, str) and label:
        return label
    count = facts.get("parameters")
    if not isinstance(count, int) or count <= 0:
        return None
    if count >= 10**9:
        return f"{count / 10**9:.1f}".removesuffix(".0") + "B"
    if count >= 10**6:
        return f"{count / 10**6:.0f}M"
    return f"{count / 10**3:.0f}K"


def describe(facts: Mapping[str, Any] | None, n_ctx: int | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(fields, meta)``: the top-level fields Open WebUI reads, and llama-server's ``meta`` keys.

    ``facts``: the GGUF facts of the model's file (None: unknown, e.g. ``-hf`` or a wrapper
    script); ``n_ctx``: the context size its running server reported (None: not loaded).
    """
    fields: dict[str, Any] = {}
    meta: dict[str, Any] = {}
    if facts:
        params = facts.get("parameters")
        weights = facts.get("weights")
        label = params_string(facts)
        if label:
            fields["params_string"] = label
        quant = QUANT_NAMES.get(facts.get("file_type"))  # type: ignore[arg-type]
        if quant is not None:
            fields["quantization"] = {"name": quant}
            if isinstance(params, int) and params > 0 and isinstance(weights, int):
                fields["quantization"]["bits_per_weight"] = round(8 * weights / params, 2)
        if isinstance(weights, int) and weights > 0:
            fields["size_bytes"] = weights
            meta["size"] = weights
        if isinstance(params, int) and params > 0:
            meta["n_params"] = params
        if facts.get("n_ctx_train"):
            meta["n_ctx_train"] = facts["n_ctx_train"]
        if facts.get("arch"):
            fields["arch"] = facts["arch"]
    if n_ctx:
        meta["n_ctx"] = n_ctx
    return fields, meta
