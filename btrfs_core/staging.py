"""Staging: objects are built, and deleted, out of sight in <pool>/.staging, so a visible object is
always whole; a crash leaves debris there (and half-made snapshots under hidden names in snapshots/),
which clear removes."""

import logging
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

log = logging.getLogger(__name__)


class StagingBackend(Protocol):
    def list_dir(self, path: Path) -> list[str]: ...
    def is_subvolume(self, path: Path) -> bool: ...
    def delete_subvolume(self, path: Path) -> None: ...
    def remove_entry(self, path: Path) -> None: ...


@dataclass(frozen=True)
class Debris:
    """What one clean-up of crash debris did: entries removed, and those that resisted (relative)."""

    removed: int
    left: list[str]


class Staging:
    """The staging directory of one pool. Every method needs the pool's lock."""

    def __init__(self, root: Path, backend: StagingBackend) -> None:
        self.root = root
        self.dir = root / ".staging"
        self._snapshots_dir = root / "snapshots"
        self._fs = backend
        self.trash: set[Path] = set()  # renamed into staging by a delete that is still deleting it
        # Used by a transfer in progress (a send's temporary snapshot, a receive), which removes it itself.
        self.busy: set[Path] = set()

    def path(self, object_id: str) -> Path:
        """A fresh name in staging for an object being built or deleted."""
        return self.dir / f"{object_id}.{secrets.token_hex(4)}"

    def discard(self, staged: Path) -> None:
        if self._fs.is_subvolume(staged):
            self._fs.delete_subvolume(staged)

    def clear(self) -> Debris:
        """Removes whatever a crash left: entries of staging, hidden half-made snapshots.

        An entry that resists is logged and left for the next round: whatever the error, it must not
        stop the driver's start-up or the reconciler.
        """
        removed, left = 0, []
        for entry in self._debris():
            try:
                self._remove(entry)
            except Exception as exc:  # a pod can make debris resist in ways no list foresees
                log.warning("debris %s not removed, retried later: %s: %s", entry, type(exc).__name__, exc)
                left.append(str(entry.relative_to(self.root)))
                continue
            removed += 1
        return Debris(removed, left)

    def _debris(self) -> list[Path]:
        """Staging entries but those a delete or transfer in progress removes itself, and the snapshots that a
        crash left half-made under their hidden names."""
        staged = [self.dir / name for name in sorted(self._fs.list_dir(self.dir))]
        hidden = [self._snapshots_dir / name for name in sorted(self._fs.list_dir(self._snapshots_dir))]
        return [entry for entry in staged if entry not in self.trash | self.busy] + [
            entry for entry in hidden if entry.name.startswith(".") and self._fs.is_subvolume(entry)
        ]

    def _remove(self, entry: Path) -> None:
        if self._fs.is_subvolume(entry):
            self._fs.delete_subvolume(entry)
        else:
            self._fs.remove_entry(entry)
