"""Secrets out of what swapproxy shows: command lines, URLs and log lines.

A model's command line reaches the log (the "spawning ..." line), and from there
``/logs``, ``/api/events``, the UI and stdout. Commands carry secrets: an upstream's
``--api-key ${env.KEY}``, a ``--hf-token``, even one of swapproxy's own keys. What is
hidden, wherever it occurs (inside a word too):

* every configured key: ``apiKeys``, ``inferenceApiKeys``, ``managementApiKeys``, each
  model's and each peer's ``apiKey`` (:meth:`Redactor.for_config`);
* the value of every ``${env.X}`` whose variable name says secret (:func:`is_secret_name`:
  KEY, TOKEN, SECRET, PASSWORD, ...), collected by the config loader;
* in a command line, the value after a key- or token-like flag (``--api-key X``,
  ``--hf-token=X``, ``-hft X``) and of a ``NAME=value`` word whose NAME says secret;
* in a URL, the password of its user info and the values of key- or token-like query
  parameters.

Paths are kept (``--api-key-file /etc/key`` stays readable), and so are values shorter
than :data:`MIN_SECRET` characters, digits-only values and booleans, which would match
half of any line. Each hidden value becomes :data:`REDACTED`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = ["REDACTED", "MIN_SECRET", "Redactor", "is_secret_name", "redact_url"]

REDACTED = "***"
#: A secret shorter than this is not searched for inside other text (it would match everywhere).
MIN_SECRET = 4

_SECRET_PARTS = frozenset({"KEY", "KEYS", "APIKEY", "TOKEN", "SECRET", "SECRETS", "PASSWORD", "PASSWD",
                           "PASS", "PASSPHRASE", "CREDENTIAL", "CREDENTIALS", "AUTH", "AUTHORIZATION", "PRIVATE", "SIG",
                           "SIGNATURE"})
_SECRET_SUFFIXES = ("KEY", "TOKEN", "SECRET", "PASSWORD", "PASSWD")
#: llama-server's short spellings of secret-taking flags (the long ones match by name).
_SECRET_SHORT_FLAGS = frozenset({"-hft"})
_FLAG = re.compile(r"--?([A-Za-z0-9][A-Za-z0-9_-]*)")
_NOT_SECRET_VALUES = frozenset({"true", "false", "yes", "no", "on", "off", "none", "null"})


def is_secret_name(name: str) -> bool:
    """Whether a variable, flag or parameter name says it holds a secret (HF_TOKEN, api-key, apiKey...)."""
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name)  # apiKey -> api_Key
    parts = [p for p in re.split(r"[^A-Za-z0-9]+", spaced.upper()) if p]
    return any(p in _SECRET_PARTS or p.endswith(_SECRET_SUFFIXES) for p in parts)


def _is_path(value: str) -> bool:
    return value.startswith(("/", "./", "../", "~"))


def _worth_hiding(value: str) -> bool:
    """Whether a value found after a secret-like name is one to hide (not a path, not a bare flag value)."""
    return bool(value) and not _is_path(value) and value.lower() not in _NOT_SECRET_VALUES


def _searchable(value: str) -> bool:
    """Whether a secret is specific enough to be hidden wherever it occurs."""
    return len(value) >= MIN_SECRET and not value.isdigit() and _worth_hiding(value)


def _secret_flag(arg: str) -> bool:
    if arg in _SECRET_SHORT_FLAGS:
        return True
    match = _FLAG.fullmatch(arg)
    return match is not None and not match[1].startswith("no-") and is_secret_name(match[1])  # --no-auth: a switch


class Redactor:
    """Hides a set of known secret values (and secret-looking arguments) in text shown to people."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # longest first: a key that contains another is hidden whole
        self._secrets = tuple(sorted({s for s in secrets if _searchable(s)}, key=len, reverse=True))

    @classmethod
    def for_config(cls, config: Any) -> Redactor:
        """Every key ``config`` holds (client keys, models' and peers' ``apiKey``) and its secret ${env.X} values."""
        keys: list[str] = [*config.all_keys, *getattr(config, "env_secrets", ())]
        keys += [m.upstream_api_key for m in config.models.values() if m.upstream_api_key]
        keys += [peer.api_key for peer in config.peers.values() if peer.api_key]
        return cls(keys)

    def text(self, text: str) -> str:
        """``text`` with every known secret replaced, wherever it occurs."""
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text

    def data(self, data: bytes) -> bytes:
        """``data`` (a request or response body) with every known secret's UTF-8 bytes replaced."""
        for secret in self._secrets:
            raw = secret.encode()
            if raw in data:
                data = data.replace(raw, REDACTED.encode())
        return data

    def argv(self, argv: Sequence[str]) -> str:
        """A command line for display: secret flag values, ``SECRET=value`` words and known secrets hidden."""
        shown: list[str] = []
        hide_next = False
        for arg in argv:
            if hide_next and not arg.startswith("--") and _worth_hiding(arg):
                shown.append(REDACTED)
                hide_next = False
                continue
            hide_next = False
            name, sep, value = arg.partition("=")
            secret_name = _secret_flag(name) or (not name.startswith("-") and is_secret_name(name))
            if "://" in name:  # a URL, whose own '=' belong to its query
                shown.append(redact_url(arg))
            elif sep and secret_name:  # --api-key=X, HF_TOKEN=X
                shown.append(f"{name}={REDACTED}" if _worth_hiding(value) else arg)
            elif sep and "://" in value:  # --proxy=URL
                shown.append(f"{name}={redact_url(value)}")
            else:
                shown.append(arg)
                hide_next = _secret_flag(arg)
        return self.text(" ".join(shown))

    def url(self, url: str) -> str:
        """A URL for display: its password, secret query values and known secrets hidden."""
        return self.text(redact_url(url))

    def __bool__(self) -> bool:
        return bool(self._secrets)


@lru_cache(maxsize=256)
def redact_url(url: str) -> str:
    """``url`` with the password of its user info and its key- or token-like query values hidden."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return url
    netloc = parts.netloc
    if password:
        user_info, _, host = netloc.rpartition("@")
        netloc = f"{user_info.partition(':')[0]}:{REDACTED}@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(is_secret_name(k) for k, _ in pairs):
            query = urlencode([(k, REDACTED if is_secret_name(k) and v else v) for k, v in pairs], safe="*")
    if netloc == parts.netloc and query == parts.query:
        return url
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
