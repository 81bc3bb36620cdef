"""`BaseNode`, the store a node sees, and the schema a worker registers for each node."""

from __future__ import annotations

from collections.abc import Callable, Iterator, MutableMapping
from typing import Any, ClassVar

from pydantic import BaseModel

from .errors import StoreError


class Store(MutableMapping[str, str]):
    """The run's store as a node sees it; writes are committed only if the execution succeeds."""

    def __init__(self, values: dict[str, str] | Callable[[], dict[str, str]]) -> None:
        self._loader = values if callable(values) else None
        self._loaded: dict[str, str] | None = None if callable(values) else dict(values)
        self.written: dict[str, str] = {}

    @property
    def _values(self) -> dict[str, str]:
        # Read from the ledger on first use only: most nodes never touch the store.
        if self._loaded is None:
            assert self._loader is not None
            self._loaded = {**self._loader(), **self.written}
        return self._loaded

    def __getitem__(self, key: str) -> str:
        return self._values[key]

    def __setitem__(self, key: str, value: str) -> None:
        if not isinstance(key, str) or not key or "." in key or "\x00" in key or len(key) > 256:
            raise StoreError(f"store key must be 1-256 characters without '.' or NUL, got {str(key)[:60]!r}")
        if not isinstance(value, str) or "\x00" in value:
            raise StoreError(f"store value for {key!r} must be a str without NUL characters")
        self.written[key] = value
        if self._loaded is not None:
            self._loaded[key] = value

    def __delitem__(self, key: str) -> None:
        raise StoreError("store keys cannot be deleted")

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def set(self, key: str, value: str) -> None:
        """Exosphere's spelling of `store[key] = value`."""
        self[key] = value


class BaseNode:
    """Subclass with nested pydantic `Inputs`, `Outputs`, `Secrets` and an `execute` method.

    `execute` may be `async def` or plain `def`; it returns one `Outputs`, a list of
    them (fan-out), or None (one empty output). `self.inputs`, `self.secrets` and
    `self.store` are set before it runs.
    """

    class Inputs(BaseModel):
        pass

    class Outputs(BaseModel):
        pass

    class Secrets(BaseModel):
        pass

    inputs: Any
    secrets: Any
    store: Store
    namespace: ClassVar[str | None] = None

    def execute(self) -> Any:  # pragma: no cover - subclasses override
        raise NotImplementedError(f"{type(self).__name__}.execute is not implemented")


def is_node_class(obj: object) -> bool:
    """True for any class shaped like a node (ours, exospherehost's, or duck-typed)."""
    if not isinstance(obj, type) or obj is BaseNode or obj.__name__ == "BaseNode":
        return False
    return all(
        isinstance(getattr(obj, name, None), type) and issubclass(getattr(obj, name), BaseModel)
        for name in ("Inputs", "Outputs", "Secrets")
    ) and callable(getattr(obj, "execute", None))


def node_schema(cls: type) -> dict[str, Any]:
    """What the ledger keeps about a node class: its input, output and secret field names."""
    models: dict[str, type[BaseModel]] = {part: getattr(cls, part) for part in ("Inputs", "Outputs", "Secrets")}
    return {
        "inputs": list(models["Inputs"].model_fields),
        "outputs": list(models["Outputs"].model_fields),
        "secrets": list(models["Secrets"].model_fields),
        "required_inputs": [n for n, f in models["Inputs"].model_fields.items() if f.is_required()],
        "required_secrets": [n for n, f in models["Secrets"].model_fields.items() if f.is_required()],
    }
