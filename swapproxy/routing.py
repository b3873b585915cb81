"""Which model does a request name, and what body goes upstream.

Pure functions over bytes and mappings: no I/O, no aiohttp. The hot path reads
the JSON body once to find ``model``; the original bytes go upstream untouched
unless the model's config asks for a rewrite (``useModelName``, ``filters``).
"""

from __future__ import annotations

import json
import mmap
import re
from collections.abc import Mapping
from typing import Any

from .config import Config, ModelConfig
from .errors import BadRequest, ModelNotFound

__all__ = [
    "parse_json_body",
    "model_from_json",
    "resolve_model",
    "rewrite_body",
    "multipart_boundary",
    "find_multipart_field",
    "PROTECTED_PARAMS",
]

#: Body keys a filter may never strip or set.
PROTECTED_PARAMS = frozenset({"model"})


def parse_json_body(body: bytes) -> dict[str, Any]:
    """Decode a JSON request body that must be an object; 400 otherwise."""
    if not body:
        raise BadRequest("request body is empty; expected a JSON object")
    try:
        obj = json.loads(body)
    except UnicodeDecodeError:
        raise BadRequest("request body is not valid UTF-8") from None
    except ValueError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise BadRequest("request body is nested too deeply to be parsed") from None
    if not isinstance(obj, dict):
        raise BadRequest(f"request body must be a JSON object, not {type(obj).__name__}")
    return obj


def model_from_json(obj: Mapping[str, Any]) -> str | None:
    """The ``model`` field of a decoded body, or None when absent."""
    model = obj.get("model")
    if model is None:
        return None
    if not isinstance(model, str):
        raise BadRequest("'model' must be a string", param="model")
    return model or None


def resolve_model(config: Config, requested: str | None) -> str:
    """Map a requested name (id, alias, or None for the default) to a model id."""
    if requested is None:
        if config.default_model is None:
            raise BadRequest("the request names no model and no defaultModel is configured", param="model")
        return config.default_model
    model_id = config.resolve(requested)
    if model_id is None:
        raise ModelNotFound(requested)
    return model_id


def rewrite_body(obj: dict[str, Any], spec: ModelConfig) -> bytes | None:
    """The body to send upstream when ``spec`` asks for a rewrite, else None (send as is)."""
    filters = spec.filters
    if not (spec.use_model_name or filters.strip_params or filters.set_params):
        return None
    out = dict(obj)
    for key in filters.strip_params:
        if key not in PROTECTED_PARAMS:
            out.pop(key, None)
    for key, value in filters.set_params.items():
        if key not in PROTECTED_PARAMS:
            out[key] = value
    if spec.use_model_name and "model" in out:
        out["model"] = spec.use_model_name
    return json.dumps(out, ensure_ascii=False, separators=(",", ":")).encode()


_BOUNDARY = re.compile(r'boundary="?([^";,]+)"?', re.IGNORECASE)
_MODEL_FIELD = re.compile(rb'content-disposition:[^\r\n]*\bname="?model"?(?:;|\r|$)', re.IGNORECASE | re.MULTILINE)


def multipart_boundary(content_type: str) -> bytes | None:
    """The boundary parameter of a multipart Content-Type."""
    match = _BOUNDARY.search(content_type)
    return match.group(1).encode("latin-1") if match else None


def find_multipart_field(buf: bytes | mmap.mmap, boundary: bytes) -> str | None:
    """The value of the text form field ``model`` in raw multipart bytes.

    ``buf`` may be an mmap of a spooled upload: only part headers are matched,
    so a file part's content is never decoded or copied.
    """
    delimiter = b"--" + boundary
    part_head = re.compile(re.escape(delimiter) + rb"\r\n((?:[^\r\n]+\r\n)*?)\r\n")
    for match in part_head.finditer(buf):
        headers = match.group(1)
        if _MODEL_FIELD.search(headers) is None or b"filename=" in headers.lower():
            continue
        end = buf.find(b"\r\n" + delimiter, match.end())
        if end < 0:
            return None
        try:
            return bytes(buf[match.end() : end]).decode("utf-8").strip() or None
        except UnicodeDecodeError:
            raise BadRequest("multipart field 'model' is not valid UTF-8", param="model") from None
    return None
