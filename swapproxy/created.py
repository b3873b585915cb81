"""When each model was first seen: llamactl's ``created`` for its instances, kept across restarts.

The times live in ``stateDir/created.json`` (model id -> Unix seconds), written atomically by
:func:`~swapproxy.statejson.write_json`. A model of the config at start that the file does not
know gets the time of that start; one added by a reload or the instance API gets the time it was
added; a removed one is forgotten. Without ``stateDir`` the times are kept in memory only.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from .statejson import read_json, write_json

__all__ = ["CreatedTimes", "FILE_NAME"]

FILE_NAME = "created.json"


class CreatedTimes:
    """Model id -> when it was first seen (Unix seconds)."""

    def __init__(self, state_dir: str | None = None) -> None:
        self.path = Path(state_dir) / FILE_NAME if state_dir else None
        self.times: dict[str, float] = {}

    def load(self, models: Iterable[str], now: float) -> None:
        """The config's models at start: their times from the file, else ``now``."""
        known = read_json(self.path)
        self.times = {model: float(known[model]) if isinstance(known.get(model), (int, float)) else now
                      for model in models}
        if self.times != known:
            write_json(self.path, self.times)

    def applied(self, added: Iterable[str], removed: Iterable[str], now: float) -> None:
        """A new config is in force: ``added`` models were created ``now``, ``removed`` ones are gone."""
        before = dict(self.times)
        for model in added:
            self.times[model] = now
        for model in removed:
            self.times.pop(model, None)
        if self.times != before:
            write_json(self.path, self.times)

    def get(self, model: str, default: float) -> float:
        return self.times.get(model, default)
