"""Progress of the bytes that move between node plugins, reported to an observer (the exporter's
counter; this package imports nothing of the exporter, the entry point wires them)."""

from typing import Protocol

SENT = "sent"
RECEIVED = "received"


class TransferObserver(Protocol):
    def moved(self, direction: str, nbytes: int) -> None:
        """`nbytes` more of a send stream went out (SENT) or came in (RECEIVED)."""
        ...


class Unobserved:
    def moved(self, direction: str, nbytes: int) -> None:
        pass
