"""llamactl's instance options, as a model entry of swapproxy's config. Pure: data in, data out.

A create or update body (``POST``/``PUT /api/v1/instances/{name}``) is read in three parts:

* **llama-server options**, as llamactl takes them: flat (``{"model": "/m.gguf", "ctx_size":
  4096}``, its older format) or under ``backend_options`` with ``backend_type: llama_cpp``.
  Each becomes a flag of the configured llama-server command: ``ctx_size`` → ``--ctx-size
  4096``; ``true`` → the bare flag, ``false`` → none; a list → the flag once per item; an object
  → its JSON. llamactl's short names (``m``, ``c``, ``ngl``...) are taken too. ``host`` and
  ``port`` are swapproxy's to choose: ``--host 127.0.0.1 --port ${PORT}`` end every command.
* **llamactl's instance settings**: ``environment`` → ``env``, ``idle_timeout`` (minutes) →
  ``ttl`` (seconds), ``command_override`` → the command the flags follow. ``auto_restart``,
  ``max_restarts``, ``restart_delay``, ``on_demand_start`` and ``nodes`` are accepted with a
  notice: swapproxy starts a model when a request needs it, and its failure rules apply.
* **swapproxy/llama-swap model keys**, as the YAML has them (``cmd``, ``ttl``, ``aliases``,
  ``checkEndpoint``, ...): taken as they are (``null`` removes a key on update). A ``cmd`` and
  llama-server options do not go together.

On update, options change the existing command in place: a flag already there gets its new
value (``null`` or ``false`` removes it), a new one is added before ``--host``/``--port`` (on a
line of its own where that flag starts a line), and everything else in the command stays as
written: macros, comment lines, indentation and backslash continuations; only the lines whose
flags changed are written anew. :func:`entry_changes` returns the
keys to set on the entry (``None``: remove) and the notices; nothing here validates the
result beyond the body's shape: the config load that follows does, as for a file.
"""

from __future__ import annotations

import difflib
import json
import re
import shlex
from collections.abc import Mapping, Sequence
from typing import Any

from .config.schema import RawModel

__all__ = ["BodyError", "MODEL_KEYS", "entry_changes", "option_flags"]

#: The keys of a ``models.<id>`` entry (llama-swap's and swapproxy's), taken from a body as they are.
MODEL_KEYS = frozenset(RawModel.model_fields)

#: llamactl's short option names (llama-server's short flags) → the long name.
_SHORT = {
    "m": "model", "c": "ctx_size", "ngl": "gpu_layers", "t": "threads", "tb": "threads_batch", "b": "batch_size",
    "ub": "ubatch_size", "np": "parallel", "fa": "flash_attn", "ctk": "cache_type_k", "ctv": "cache_type_v",
    "a": "alias", "hf": "hf_repo", "hfr": "hf_repo", "hff": "hf_file", "s": "seed", "n": "predict",
    "md": "model_draft", "dev": "device", "ts": "tensor_split", "mg": "main_gpu", "sm": "split_mode",
    "ot": "override_tensor", "cb": "cont_batching", "nocb": "no_cont_batching", "to": "timeout",
    "ngld": "gpu_layers_draft", "cd": "ctx_size_draft", "v": "verbose", "j": "json_schema", "sp": "special",
}
#: Long names whose llama-server flag is not the name in kebab case.
_FLAG = {"temperature": "--temp", "fim_qwen_1_5b_default": "--fim-qwen-1.5b-default"}
#: Other spellings llama-server accepts for a flag (to find it in an existing command).
_ALSO = {"gpu_layers": ("--n-gpu-layers",), "gpu_layers_draft": ("--n-gpu-layers-draft",),
         "predict": ("--n-predict",), "hf_repo": ("-hfr",)}
#: swapproxy chooses these: every command ends with them.
_OWNED = ("host", "port")
_IGNORED = ("auto_restart", "max_restarts", "restart_delay", "restart_delay_seconds", "on_demand_start", "nodes",
            "docker_enabled", "execution_context")
_INSTANCE = ("backend_type", "backend_options", "environment", "idle_timeout", "command_override", *_IGNORED)
_BACKENDS = ("llama_cpp", "llama-cpp", "llamacpp", "llama.cpp")
_OPTION_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")
_SAFE = re.compile(r"[\w@%+=:,./${}-]+")  # a word that needs no quoting (a ${macro} stays bare)
_ONE_LINE = 100  # a longer command is written one flag per line, as config.example.yaml does


#: llama-server options that look like a model key (so are not taken for a typo of one)
_LOOK_ALIKE = frozenset({"alias"})


def _near_model_key(key: str) -> str | None:
    """The model key ``key`` is most likely a typo of (``ttll`` → ``ttl``), if any."""
    close = difflib.get_close_matches(key.lower(), {k.lower(): k for k in MODEL_KEYS}, n=1, cutoff=0.8)
    return next((k for k in MODEL_KEYS if k.lower() == close[0]), None) if close else None


class BodyError(ValueError):
    """The body cannot be read as instance options; ``key`` names the offending one."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


def _canonical(name: str) -> str:
    name = _SHORT.get(name, name)
    return name.replace("-", "_")


def _spellings(name: str) -> set[str]:
    """Every flag spelling that sets option ``name`` (its long flag, short flags, aliases)."""
    out = {_FLAG.get(name, "--" + name.replace("_", "-")), *_ALSO.get(name, ())}
    out.update("-" + short for short, long in _SHORT.items() if long == name)
    return out


def _values(name: str, value: Any) -> list[str] | None:
    """The tokens option ``name`` = ``value`` adds (None: the option is off)."""
    if value is None or value is False:
        return None
    flag = _FLAG.get(name, "--" + name.replace("_", "-"))
    if value is True:
        return [flag]
    items = value if isinstance(value, list) else [value]
    out: list[str] = []
    for item in items:
        if isinstance(item, (dict, list)):
            text = json.dumps(item)
        elif isinstance(item, bool):
            text = "true" if item else "false"
        elif isinstance(item, float) and item.is_integer():
            text = str(int(item))
        else:
            text = str(item)
        out += [flag, text]
    return out


def option_flags(options: Mapping[str, Any]) -> list[str]:
    """llama-server's flags for ``options`` (canonical names), in the order given."""
    out: list[str] = []
    for name, value in options.items():
        out += _values(name, value) or []
    return out


def _quote(token: str) -> str:
    return token if _SAFE.fullmatch(token) else shlex.quote(token)


def _command(argv: Sequence[str]) -> str:
    """A command line for ``cmd``: one line, or, when long, one flag (and its value) per line."""
    line = " ".join(_quote(t) for t in argv)
    if len(line) <= _ONE_LINE:
        return line
    rows: list[list[str]] = []
    for token in argv:
        if token.startswith("-") and not _is_number(token) or not rows:
            rows.append([token])
        else:
            rows[-1].append(token)
    return "\n".join(" ".join(_quote(t) for t in row) for row in rows) + "\n"


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _takes_value(argv: Sequence[str], i: int) -> bool:
    """Whether the flag at ``i`` is followed by its value (anything but another flag)."""
    return i + 1 < len(argv) and (not argv[i + 1].startswith("-") or _is_number(argv[i + 1]))


def _set_options(argv: list[str], options: Mapping[str, Any]) -> list[str]:
    """``argv`` with each option set to its new value in place, removed, or added before ``--host``."""
    for name, value in options.items():
        spellings = _spellings(name)
        new = _values(name, value)
        out: list[str] = []
        placed = False
        i = 0
        while i < len(argv):
            token = argv[i]
            flag = token.split("=", 1)[0]
            if flag in spellings:
                skip = 1 if "=" in token or not _takes_value(argv, i) else 2
                if new is not None and not placed:
                    out += new
                    placed = True
                i += skip
                continue
            out.append(token)
            i += 1
        if new is not None and not placed:
            at = next((j for j, t in enumerate(out) if t.split("=", 1)[0] in ("--host", "--port")), len(out))
            out[at:at] = new
        argv = out
    return argv


class _Line:
    """One line of a multi-line ``cmd``: kept as written unless an option changed its words."""

    __slots__ = ("text", "words", "indent", "continued", "changed")

    def __init__(self, text: str | None, words: list[str] | None, indent: str = "", continued: bool = False) -> None:
        self.text = text  # as written (None: a line added here)
        self.words = words  # its arguments; None: a comment or blank line, never touched
        self.indent = indent
        self.continued = continued  # it ends with a backslash
        self.changed = text is None

    def render(self) -> str:
        if not self.changed:
            assert self.text is not None
            return self.text
        assert self.words is not None
        return self.indent + " ".join(_quote(t) for t in self.words) + (" \\" if self.continued else "")


def _lines(cmd: str) -> list[_Line] | None:
    """``cmd`` line by line; None when a line cannot be split alone (a quote open across lines)."""
    out: list[_Line] = []
    for text in cmd.split("\n"):
        body = text.rstrip()
        if not body.strip() or body.lstrip().startswith("#"):
            out.append(_Line(text, None))
            continue
        continued = body.endswith("\\")
        try:
            words = shlex.split(body[:-1] if continued else body)
        except ValueError:
            return None
        out.append(_Line(text, words, body[: len(body) - len(body.lstrip())], continued))
    return out


def _edit_in_place(cmd: str, options: Mapping[str, Any]) -> str | None:
    """``cmd`` with ``options`` set where their flags are, every other line as written (comment
    lines, indentation, continuations); None when that cannot be done line by line (a quote or a
    flag's value across lines), and the whole command is written anew instead."""
    lines = _lines(cmd)
    if lines is None:
        return None
    for name, value in options.items():
        spellings = _spellings(name)
        new = _values(name, value)
        placed = False
        for line in lines:
            words = line.words
            if words is None:
                continue
            out: list[str] = []
            i = 0
            while i < len(words):
                token = words[i]
                if token.split("=", 1)[0] not in spellings:
                    out.append(token)
                    i += 1
                    continue
                if "=" not in token and i + 1 == len(words) and _next_takes(lines, line):
                    return None  # its value is on the next line
                if new is not None and not placed:
                    out += new
                    placed = True
                i += 1 if "=" in token or not _takes_value(words, i) else 2
                line.changed = True
            line.words = out
        if new is not None and not placed:
            _add(lines, new)
    kept = [line for line in lines if not (line.changed and line.text is not None and not line.words)]
    return "\n".join(line.render() for line in kept)


def _next_takes(lines: list[_Line], line: _Line) -> bool:
    """Whether the line after ``line`` (comments aside) starts with a value, not a flag."""
    after = lines[lines.index(line) + 1:]
    nxt = next((other.words for other in after if other.words), None)
    return nxt is not None and (not nxt[0].startswith("-") or _is_number(nxt[0]))


def _last_words(lines: list[_Line]) -> _Line | None:
    return next((line for line in reversed(lines) if line.words is not None), None)


def _add(lines: list[_Line], flags: list[str]) -> None:
    """Add ``flags`` before ``--host``/``--port``: a line of their own where that flag starts a line."""
    for at, line in enumerate(lines):
        words = line.words or []
        j = next((k for k, t in enumerate(words) if t.split("=", 1)[0] in ("--host", "--port")), None)
        if j is None:
            continue
        if j == 0 and any(other.words for other in lines[:at]):
            before = next(other for other in reversed(lines[:at]) if other.words is not None)
            lines.insert(at, _Line(None, list(flags), line.indent, before.continued))
        else:
            line.words = [*words[:j], *flags, *words[j:]]
            line.changed = True
        return
    last = _last_words(lines)
    if last is not None:
        last.words = [*(last.words or []), *flags]
        last.changed = True


def _split(cmd: str) -> list[str]:
    text = "\n".join(line for line in cmd.splitlines() if not line.strip().startswith("#"))
    text = "\n".join(line[:-1] if line.rstrip().endswith("\\") else line for line in text.splitlines())
    try:
        return shlex.split(text)
    except ValueError as exc:
        raise BodyError(f"the model's cmd cannot be split into arguments: {exc}", "cmd") from None


def _read(body: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], list[str]]:
    """The body as (model keys, llama-server options, instance settings, notices)."""
    keys: dict[str, Any] = {}
    options: dict[str, Any] = {}
    settings: dict[str, Any] = {}
    notices: list[str] = []
    backend = body.get("backend_type")
    if backend is not None and backend not in _BACKENDS:
        raise BodyError(f"backend_type {backend!r} is not supported: swapproxy runs llama.cpp's llama-server "
                        "(backend_type: llama_cpp); give any other server as a cmd", "backend_type")
    nested = body.get("backend_options")
    if nested is not None and not isinstance(nested, dict):
        raise BodyError("backend_options must be an object of llama-server options", "backend_options")
    for source, items in (("", body), ("backend_options.", nested or {})):
        for key, value in items.items():
            if not source and key in MODEL_KEYS:
                keys[key] = value
            elif not source and key in _INSTANCE:
                settings[key] = value
            elif not _OPTION_NAME.fullmatch(key):
                raise BodyError(f"unknown key '{source}{key}': neither a model key (cmd, ttl, aliases, ...) nor "
                                "a llama-server option (snake_case, as ctx_size)", key)
            elif not source and key not in _LOOK_ALIKE and (near := _near_model_key(key)):
                raise BodyError(f"unknown key '{key}'; did you mean '{near}'? (other keys are taken as llama-server "
                                "options, and would become its flags)", key)
            elif _canonical(key) in _OWNED:
                notices.append(f"{source}{key} ignored: swapproxy runs each model on 127.0.0.1 at its ${{PORT}}")
            else:
                options[_canonical(key)] = value
    for key in _IGNORED:
        if key in settings:
            notices.append(f"{key} ignored: swapproxy starts a model when a request needs it and stops it "
                           "by its ttl and swap rules")
    return keys, options, settings, notices


def entry_changes(body: Any, binary: Sequence[str], existing: Mapping[str, Any] | None = None
                  ) -> tuple[dict[str, Any], list[str]]:
    """The keys to set on ``models.<name>`` for ``body`` (``None``: remove the key), and notices.

    ``binary``: the llama-server command a created model runs; ``existing``: the entry as
    written, on update (None on create)."""
    if not isinstance(body, dict):
        raise BodyError("the body must be a JSON object of instance options")
    keys, options, settings, notices = _read(body)
    if "cmd" in keys and (options or "command_override" in settings):
        raise BodyError("give either a cmd or llama-server options (model, ctx_size, ...), not both", "cmd")
    env = settings.get("environment")
    if env is not None:
        if not isinstance(env, dict) or not all(isinstance(v, (str, int, float)) for v in env.values()):
            raise BodyError("environment must be an object of NAME: value", "environment")
        keys.setdefault("env", [f"{k}={v}" for k, v in env.items()])
    idle = settings.get("idle_timeout")
    if idle is not None:
        if isinstance(idle, bool) or not isinstance(idle, (int, float)) or idle < 0:
            raise BodyError("idle_timeout must be a number of minutes (0: never)", "idle_timeout")
        keys.setdefault("ttl", idle * 60)
    override = settings.get("command_override")
    if override is not None and not isinstance(override, str):
        raise BodyError("command_override must be a command line (a string)", "command_override")
    base = _split(override) if override else list(binary)
    if existing is None:
        if "cmd" not in keys and "model" not in options and "hf_repo" not in options:
            raise BodyError("a new instance needs a model (llama-server's -m, as {\"model\": \"/models/x.gguf\"}), "
                            "an hf_repo, or a cmd", "model")
        if "cmd" not in keys:
            keys["cmd"] = _command([*base, *option_flags(options), "--host", "127.0.0.1", "--port", "${PORT}"])
    elif options or override:
        current = existing.get("cmd")
        if not isinstance(current, str):
            raise BodyError("this model has no cmd to set llama-server options in", "cmd")
        edited = None if override else _edit_in_place(current, options)
        if edited is not None:
            keys["cmd"] = edited
        else:
            argv = _split(current)
            if override:
                first = next((i for i, t in enumerate(argv) if t.startswith("-")), len(argv))
                argv = [*base, *argv[first:]]
            keys["cmd"] = _command(_set_options(argv, options))
    return keys, notices
