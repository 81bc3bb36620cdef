"""`StateManager`: the client's parts (graphs, triggering, reading, waiting, operator actions) in one class."""

from __future__ import annotations

from .graphs import Graphs
from .operator import Operator
from .triggering import Triggering
from .waiting import Waiting


class StateManager(Graphs, Triggering, Waiting, Operator):
    """Client for one namespace. Every public method is `async`, like exospherehost's.

    The positional arguments are the SDK's (`namespace, state_manager_uri, key,
    state_manager_version`); the last three are accepted and unused, since the client talks to
    the ledger and the broker directly. Ours are keyword-only.
    """
