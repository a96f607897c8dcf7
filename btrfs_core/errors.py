"""Typed errors of the core. The gRPC layer maps each class to one status code."""


class BtrfsCoreError(Exception):
    """Base class: anything the core refuses or fails to do, with a message naming the object."""


class InvalidArgument(BtrfsCoreError):
    """A name, ID, size or parameter the core will not use."""


class NotFound(BtrfsCoreError):
    """The volume, snapshot or subvolume does not exist."""


class AlreadyExists(BtrfsCoreError):
    """An object with this name exists with incompatible properties."""


class CapacityOutOfRange(BtrfsCoreError):
    """The requested capacity cannot be honoured (too small, too large, a shrink)."""


class InsufficientCapacity(BtrfsCoreError):
    """The pool has no room for the request."""


class InUse(BtrfsCoreError):
    """The object is busy and cannot be changed now."""


class NestedSubvolumes(BtrfsCoreError):
    """The volume holds nested subvolumes, which a snapshot or clone of it would leave out."""


class QuotaDisabled(BtrfsCoreError):
    """Quotas are off on the pool (disabled behind the driver's back): no capacity can be enforced."""


class KernelError(BtrfsCoreError):
    """An ioctl or syscall failed; carries the errno and the operation."""

    def __init__(self, operation: str, errno: int, detail: str) -> None:
        super().__init__(f"{operation}: {detail}")
        self.operation = operation
        self.errno = errno


class ReadOnly(KernelError):
    """EROFS: the pool is mounted read-only (or the subvolume is): a refusal, not a failure."""
