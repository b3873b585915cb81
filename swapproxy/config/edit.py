"""Edits of a config file's text that keep everything else byte for byte: comments, order, layout.

The instance API and the UI's model form change one ``models.<id>`` entry at a time; the
rest of the operator's file must come back exactly as they wrote it. So an edit never
re-writes the whole document: ruamel.yaml (the YAML round-trip library) finds where the
entry's lines are, only those lines are re-rendered — through a ruamel round trip of the
entry alone, so the comments inside it survive too — and spliced back between the
untouched lines before and after. A new entry is appended after the last one, indented
like its siblings. Where that cannot work (the entry or ``models`` written in flow style,
``{...}``, as a JSON file is; an entry that uses an anchor defined elsewhere), the whole
document goes through one ruamel round trip instead, which still keeps comments and order.

Pure text in, text out: no file I/O (:mod:`swapproxy.configstore` reads and writes files).
The result is validated like any config file (:func:`swapproxy.config.load_config` with
``texts``) before anything is written.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap
from ruamel.yaml.error import YAMLError
from ruamel.yaml.scalarstring import LiteralScalarString

__all__ = ["EditError", "model_entry", "model_ids", "remove_model", "set_model", "update_model"]

Entry = Mapping[str, Any]


class EditError(ValueError):
    """The text cannot be edited as asked (not YAML, no mapping at the top, no such model...)."""


Layout = tuple[int, int]  # (mapping indent, the dash's offset in a block sequence)


def _yaml(layout: Layout = (2, 0)) -> YAML:
    mapping, offset = layout
    y = YAML()  # round-trip: comments, key order and quoting are kept
    y.preserve_quotes = True
    y.width = 1 << 16  # never fold a long line (a cmd) that was on one line
    y.indent(mapping=mapping, sequence=offset + 2, offset=offset)
    return y


def _layout(text: str) -> Layout:
    """How the text indents: a nested key's step (2 unless seen), and where a list's dash sits under
    its key (0: flush, ``key:\n- a``; 2: ``key:\n  - a``)."""
    mapping: int | None = None
    offset: int | None = None
    rows = [(len(line) - len(line.lstrip()), line.strip()) for line in text.splitlines()]
    rows = [(col, body) for col, body in rows if body and not body.startswith("#")]
    for (col, body), (next_col, next_body) in zip(rows, rows[1:]):
        if not body.rstrip().endswith(":") or next_col < col:
            continue
        if next_body.startswith("- ") or next_body == "-":
            offset = next_col - col if offset is None else offset
        elif next_col > col:
            mapping = next_col - col if mapping is None else mapping
        if mapping is not None and offset is not None:
            break
    return mapping or 2, offset or 0


def _load(text: str) -> tuple[Any, Layout]:
    """The document (ruamel's round-trip data) and its layout."""
    try:
        data = _yaml().load(text)
    except YAMLError as exc:
        raise EditError(f"the file is not valid YAML: {exc}") from None
    if data is None:
        data = CommentedMap()
    if not isinstance(data, CommentedMap):
        raise EditError("the top level of the file must be a mapping of settings")
    return data, _layout(text)


def _models(data: CommentedMap) -> CommentedMap | None:
    models = data.get("models")
    if models is not None and not isinstance(models, CommentedMap):
        raise EditError("'models' in the file must be a mapping of model ids")
    return models


def _plain(value: Any) -> Any:
    """ruamel's data as plain JSON-able Python data."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, str):
        return str(value)
    return value


def _yaml_value(value: Any) -> Any:
    """JSON data as ruamel renders it best: a multi-line string as a ``|`` block."""
    if isinstance(value, Mapping):
        return {k: _yaml_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_yaml_value(v) for v in value]
    if isinstance(value, str) and "\n" in value:
        return LiteralScalarString(value if value.endswith("\n") else value + "\n")
    return value


def model_ids(text: str) -> list[str]:
    """The model ids the text defines, in order."""
    models = _models(_load(text)[0])
    return [str(k) for k in models] if models else []


def model_entry(text: str, model_id: str) -> dict[str, Any] | None:
    """``models.<model_id>`` as written (macros not expanded), as plain data; None when absent."""
    models = _models(_load(text)[0])
    if not models or model_id not in models:
        return None
    entry = models[model_id]
    return _plain(entry) if isinstance(entry, Mapping) else None


# -- where an entry's lines are ---------------------------------------------------------------------------
def _content(lines: list[str], start: int, end: int) -> int:
    """``end`` moved back over blank and comment-only lines (they stay where they are)."""
    while end > start + 1 and (not lines[end - 1].strip() or lines[end - 1].lstrip().startswith("#")):
        end -= 1
    return end


def _span(data: CommentedMap, models: CommentedMap, lines: list[str], model_id: str) -> tuple[int, int, int]:
    """The lines [start, end) of ``models.<model_id>`` and the column of its key."""
    keys = list(models)
    i = keys.index(model_id)
    start, column = models.lc.key(model_id)
    if i + 1 < len(keys):
        end = models.lc.key(keys[i + 1])[0]
    else:
        tops = list(data)
        j = tops.index("models")
        end = data.lc.key(tops[j + 1])[0] if j + 1 < len(tops) else len(lines)
    return start, _content(lines, start, end), column


def _is_block(models: CommentedMap | None) -> bool:
    return models is not None and not models.fa.flow_style()


def _render(model_id: str, entry: Any, column: int, layout: Layout) -> list[str]:
    """``model_id: entry`` as YAML lines, its key at ``column``."""
    doc = CommentedMap()
    doc[model_id] = entry
    return _dump(doc, layout, column)


def _dump(doc: CommentedMap, layout: Layout, column: int = 0) -> list[str]:
    out = io.StringIO()
    _yaml(layout).dump(doc, out)
    return [(" " * column + line) if line.strip() else line for line in out.getvalue().splitlines()]


def _whole(text: str, change: Callable[[CommentedMap], None]) -> str:
    """The fallback: ``change`` the whole document, dumped in one ruamel round trip."""
    data, layout = _load(text)
    change(data)
    return _join(_dump(data, layout), True)


def _join(lines: list[str], newline: bool) -> str:
    return "\n".join(lines) + ("\n" if newline and lines else "")


def _bare_key(line: str) -> bool:
    """Whether a ``key:`` line has nothing after its colon but, maybe, a comment."""
    rest = line.split(":", 1)[1] if ":" in line else "x"
    return not rest.strip() or rest.strip().startswith("#")


# -- the edits --------------------------------------------------------------------------------------------
def set_model(text: str, model_id: str, entry: Entry) -> str:
    """Add ``models.<model_id>`` (after the last model) or replace it whole, in place."""
    data, layout = _load(text)
    models = _models(data)
    value = _yaml_value(dict(entry))
    lines = text.splitlines()
    newline = text.endswith("\n") or not text

    def whole() -> str:
        return _whole(text, lambda d: d["models"].__setitem__(model_id, value))

    if models is not None and model_id in models:
        if not _is_block(models) or not isinstance(models[model_id], CommentedMap):
            return whole()
        start, end, column = _span(data, models, lines, model_id)
        return _join(lines[:start] + _render(model_id, value, column, layout) + lines[end:], newline)
    if models is None and "models" not in data:
        return _join(lines + ["models:"] + _render(model_id, value, layout[0], layout), True)
    if models is None:  # `models:` with nothing under it
        at = data.lc.key("models")[0]
        if not _bare_key(lines[at]):  # `models: ~`
            return _whole(text, lambda d: d.__setitem__("models", CommentedMap([(model_id, value)])))
        return _join(lines[: at + 1] + _render(model_id, value, layout[0], layout) + lines[at + 1:], newline)
    if not _is_block(models) or not len(models):
        return whole()
    _, end, column = _span(data, models, lines, list(models)[-1])
    return _join(lines[:end] + _render(model_id, value, column, layout) + lines[end:], newline)


def update_model(text: str, model_id: str, changes: Mapping[str, Any]) -> str:
    """Set the keys of ``changes`` in ``models.<model_id>`` (``None`` removes a key): only the lines
    of those keys change; the entry's other keys and comments stay as they are."""
    data, layout = _load(text)
    models = _models(data)
    if models is None or model_id not in models:
        raise EditError(f"model '{model_id}' is not defined in this file")
    entry = models[model_id]
    if not isinstance(entry, CommentedMap):
        raise EditError(f"models.{model_id} is not a mapping")
    if not _is_block(models) or not _is_block(entry) or not len(entry):

        def apply(doc: CommentedMap) -> None:
            for key, value in changes.items():
                if value is None:
                    doc["models"][model_id].pop(key, None)
                else:
                    doc["models"][model_id][key] = _yaml_value(value)

        return _whole(text, apply)
    lines = text.splitlines()
    _, entry_end, _ = _span(data, models, lines, model_id)
    keys = list(entry)
    column = entry.lc.key(keys[0])[1]
    edits: list[tuple[int, int, list[str]]] = []
    added: list[str] = []
    for key, value in changes.items():
        if key in entry:
            start, end, key_column = _key_span(entry, key, entry_end, lines)
            new = [] if value is None else _render(key, _yaml_value(value), key_column, layout)
            edits.append((start, end, _keep_comment(entry, key, new) if new else new))
        elif value is not None:
            added += _render(key, _yaml_value(value), column, layout)
    if added:
        end = _key_span(entry, keys[-1], entry_end, lines)[1]
        edits.append((end, end, added))
    for start, end, new in sorted(edits, key=lambda e: e[0], reverse=True):
        lines[start:end] = new
    return _join(lines, text.endswith("\n"))


def _key_span(mapping: CommentedMap, key: Any, limit: int, lines: list[str]) -> tuple[int, int, int]:
    """The lines [start, end) of ``mapping[key]`` (a mapping that ends before line ``limit``), its column."""
    keys = list(mapping)
    i = keys.index(key)
    start, column = mapping.lc.key(key)
    end = mapping.lc.key(keys[i + 1])[0] if i + 1 < len(keys) else limit
    return start, _content(lines, start, end), column


def _keep_comment(entry: CommentedMap, key: Any, new: list[str]) -> list[str]:
    """A ``key: value  # comment`` keeps its comment when its new value fits on one line too."""
    token = entry.ca.items.get(key, [None, None, None])[2]
    if token is None or len(new) != 1 or not token.value.startswith("#"):
        return new
    return [f"{new[0]}  {token.value.splitlines()[0].rstrip()}"]


def remove_model(text: str, model_id: str) -> str:
    """The text without ``models.<model_id>`` (the comments around it stay)."""
    data, _ = _load(text)
    models = _models(data)
    if models is None or model_id not in models:
        raise EditError(f"model '{model_id}' is not defined in this file")
    lines = text.splitlines()
    if not _is_block(models) or len(models) == 1:
        return _whole(text, lambda d: d["models"].pop(model_id))
    start, end, _ = _span(data, models, lines, model_id)
    return _join(lines[:start] + lines[end:], text.endswith("\n"))
