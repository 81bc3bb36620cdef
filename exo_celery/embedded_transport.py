"""The embedded default's broker: kombu's filesystem transport, made safe for several processes.

kombu's own transport creates a message file before writing it, so a consumer
polling every few milliseconds can read an empty file and the worker stops on a
JSONDecodeError (celery/kombu#1551). Here a message is written under a hidden
temporary name and renamed into place, and a consumer claims a file by renaming
it into a processing folder on the same filesystem (atomic: one consumer wins).

A worker consumes one queue per node it serves; kombu polls them one after the other, so the
folder's listing is shared by the queues polled within a few milliseconds instead of being read
once per queue.
"""

from __future__ import annotations

import logging
import os
import uuid
from queue import Empty
from time import monotonic
from typing import Any

from kombu.transport import filesystem
from kombu.utils.encoding import bytes_to_str, str_to_bytes
from kombu.utils.json import dumps, loads

from .poison import SafeDelivery

log = logging.getLogger("exo_celery.embedded")


LISTING_TTL = 0.005  # seconds one listing of the queue folder serves every queue polled meanwhile


class Channel(filesystem.Channel):
    """Atomic publish and claim on top of kombu's filesystem channel."""

    _listing: list[str] = []
    _listed_at = -1.0

    def _names(self) -> list[str]:
        now = monotonic()
        if now - self._listed_at > LISTING_TTL:
            self._listing = sorted(os.listdir(self.data_folder_in))
            self._listed_at = now
        return self._listing

    @property
    def processing_folder(self) -> str:
        folder = self.transport_options.get("processing_folder") or os.path.join(self.data_folder_in, ".processing")
        os.makedirs(folder, exist_ok=True)
        return str(folder)

    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]
        name = f"{round(monotonic() * 1000):015d}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        temporary = os.path.join(self.data_folder_out, f".{name}.tmp")  # never matches a queue's pattern
        with open(temporary, "wb") as f:
            f.write(str_to_bytes(dumps(payload)))
        os.replace(temporary, final)

    def _get(self, queue: str, timeout: float | None = None) -> Any:
        wanted = f"{queue}.msg"
        for filename in self._names():
            if filename.startswith(".") or filename.partition(".")[2] != wanted:
                continue
            claimed = os.path.join(self.processing_folder, filename)
            try:
                os.rename(os.path.join(self.data_folder_in, filename), claimed)
            except OSError:
                continue  # another consumer took it
            try:
                with open(claimed, "rb") as f:
                    payload = f.read()
                os.remove(claimed)
                return loads(bytes_to_str(payload))
            except (OSError, ValueError):
                # A torn file: drop it; the state stays in the ledger and beat's sweep re-sends it.
                log.warning("discarded a message file that is not JSON: %s", filename)
                continue
        raise Empty()


class Transport(SafeDelivery, filesystem.Transport):
    """kombu's filesystem transport with the atomic channel above (an envelope of the wrong shape is dropped)."""

    Channel = Channel
