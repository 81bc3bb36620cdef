"""Messages a worker cannot use: logged and dropped, never a reason for the worker to stop.

Anything can be pushed onto a queue (`LPUSH exo.<ns> 'not json'`, a foreign producer, a truncated
write). kombu's Redis channel decodes the envelope itself, and a JSONDecodeError or an envelope of
the wrong shape escapes its event loop as Celery's "Unrecoverable error": the worker exits
(celery/celery#1113, #4308; kombu already drops undecodable *fanout* messages the same way).
The transports here drop such a message with a warning instead. It is gone from the queue and no
state is lost: a state's truth is in the ledger, and beat's sweep re-sends a state whose message
never arrived. Bodies that decode but do not fit a task are Celery's business (it logs and
rejects them); a task message whose arguments are not (state id, run id) is dropped by
`task_args_problem` in the task itself.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
from queue import Empty
from typing import Any

from kombu.transport import redis

log = logging.getLogger("exo_celery.poison")

_ID = re.compile(r"[0-9a-f]{32}")


def task_args_problem(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    """Why a task message's arguments are not (state id, run id), or None."""
    if kwargs:
        return f"unexpected keyword arguments {sorted(map(str, kwargs))[:5]}"
    if len(args) != 2:
        return f"expected 2 arguments (state id, run id), got {len(args)}"
    for name, value in zip(("state id", "run id"), args, strict=True):
        if not isinstance(value, str) or not _ID.fullmatch(value):
            return f"{name} {str(value)[:40]!r} is not 32 hex digits"
    return None


def envelope_problem(payload: Any) -> str | None:
    """Why a decoded transport payload is not a kombu message envelope, or None.

    These are exactly the fields kombu reads before it hands the message to Celery (which copes with
    anything else, such as missing headers or an undecodable body).
    """
    if not isinstance(payload, dict):
        return f"the envelope is a JSON {type(payload).__name__}, not an object"
    properties = payload.get("properties")
    if not isinstance(properties, dict):
        return "the envelope has no 'properties' object"
    if "delivery_tag" not in properties:
        return "the envelope has no delivery tag"
    info = properties.get("delivery_info")
    if not isinstance(info, dict) or "exchange" not in info or "routing_key" not in info:
        return "the envelope has no delivery_info with exchange and routing_key"
    if not isinstance(payload.get("headers") or {}, dict):
        return "the envelope's headers are not an object"
    body = payload.get("body")
    if body is not None and not isinstance(body, str):
        return f"the envelope's body is a {type(body).__name__}, not text"
    if body and properties.get("body_encoding") == "base64":
        try:
            base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            return "the envelope's body is not valid base64"
    return None


def _shown(raw: Any) -> str:
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else repr(raw)
    return text[:200] + ("..." if len(text) > 200 else "")


class SafeDelivery:
    """Mixin for a kombu virtual transport: an envelope of the wrong shape is logged and dropped."""

    def _deliver(self, message: Any, queue: str) -> None:
        if (problem := envelope_problem(message)) is not None:
            log.warning(
                "discarded a message on %r that is not a kombu message (%s): %s", queue, problem, _shown(message)
            )
            return
        super()._deliver(message, queue)  # type: ignore[misc]


class RedisChannel(redis.Channel):
    """kombu's Redis channel, dropping a message whose envelope is not JSON instead of stopping the worker."""

    def _brpop_read(self, **options: Any) -> Any:
        try:
            return super()._brpop_read(**options)  # type: ignore[no-untyped-call]  # unannotated in kombu
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            # BRPOP already took the message off the queue: dropping it is all that is left to do.
            log.warning("discarded a message that is not JSON (%s)", exc)
            raise Empty() from None

    def _get(self, queue: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return super()._get(queue, *args, **kwargs)  # type: ignore[no-untyped-call]  # unannotated in kombu
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            log.warning("discarded a message on %r that is not JSON (%s)", queue, exc)
            raise Empty() from None


class RedisTransport(SafeDelivery, redis.Transport):
    """kombu's Redis transport with the channel above (`redis://` broker URLs use it)."""

    Channel = RedisChannel
