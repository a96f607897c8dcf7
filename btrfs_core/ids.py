"""Volume and snapshot IDs: derived from CSI names, checked before they become directory names."""

import hashlib
import re
from collections.abc import Iterable

from btrfs_core.errors import InvalidArgument
from btrfs_core.text import shortened

MAX_NAME_BYTES = 128
# IDs are directory names: a letter or digit first, so never "." or "..", and no "/" or NUL.
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_PLAIN_NAME_CHARS = 100  # longer names are hashed, leaving room for staging suffixes
# The shape of a hashed ID: a name of this shape is hashed too, or it would share its ID with the name
# it is the hash of (two different volumes, one directory).
_HASHED_ID = re.compile(r"h-[0-9a-f]{40}")


def object_id(name: str, kind: str) -> str:
    """The ID for a CSI name: the name itself when safe, else a hash of it. Deterministic, so a
    repeated create finds its object."""
    if not name:
        raise InvalidArgument(f"{kind} name is empty")
    if "\x00" in name:
        raise InvalidArgument(f"{kind} name contains a NUL character")
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise InvalidArgument(f"{kind} name is longer than {MAX_NAME_BYTES} bytes")
    if _ID.fullmatch(name) and len(name) <= _PLAIN_NAME_CHARS and not _HASHED_ID.fullmatch(name):
        return name
    return "h-" + hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:40]


def check_id(object_id: str, kind: str) -> str:
    """An ID from a request, refused before it can become a path."""
    if not _ID.fullmatch(object_id):
        raise InvalidArgument(f"{kind} id {shortened(object_id, 64)!r} is not a valid id")
    return object_id


def ids_among(names: Iterable[str]) -> list[str]:
    """The names that are IDs this driver could have made, sorted."""
    return sorted(name for name in names if _ID.fullmatch(name))
