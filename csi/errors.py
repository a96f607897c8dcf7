"""THE one table from core errors to gRPC status codes, and the driver's own refusals.

The core raises typed errors (btrfs_core.errors); request validation, the try-locks and the servicers raise
CsiError for refusals the core has no class for (a missing field, a bad page token, a busy object). An RPC
this driver does not implement is left to the generated servicer base, which raises NotImplementedError.
The server interceptor turns all three into a status through `status_for`; everything else is an internal
error.
"""

from collections.abc import Mapping
from types import MappingProxyType

import grpc

from btrfs_core import errors as core

CORE_ERROR_CODES: Mapping[type[core.BtrfsCoreError], grpc.StatusCode] = MappingProxyType(
    {
        core.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
        core.NotFound: grpc.StatusCode.NOT_FOUND,
        core.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
        core.CapacityOutOfRange: grpc.StatusCode.OUT_OF_RANGE,
        core.InsufficientCapacity: grpc.StatusCode.RESOURCE_EXHAUSTED,
        core.InUse: grpc.StatusCode.FAILED_PRECONDITION,
        core.ReadOnly: grpc.StatusCode.FAILED_PRECONDITION,
        core.QuotaDisabled: grpc.StatusCode.FAILED_PRECONDITION,
        core.NestedSubvolumes: grpc.StatusCode.FAILED_PRECONDITION,
    }
)


class CsiError(Exception):
    """A refusal decided in the gRPC layer, with the status code the CSI spec names for it."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def invalid(message: str) -> CsiError:
    return CsiError(grpc.StatusCode.INVALID_ARGUMENT, message)


def out_of_range(message: str) -> CsiError:
    return CsiError(grpc.StatusCode.OUT_OF_RANGE, message)


def aborted(message: str) -> CsiError:
    """The object is busy, or the request continues a listing that is gone: the CO retries or restarts."""
    return CsiError(grpc.StatusCode.ABORTED, message)


def failed_precondition(message: str) -> CsiError:
    return CsiError(grpc.StatusCode.FAILED_PRECONDITION, message)


def resource_exhausted(message: str) -> CsiError:
    return CsiError(grpc.StatusCode.RESOURCE_EXHAUSTED, message)


def unavailable(message: str) -> CsiError:
    """Overload: the CO retries with back-off (RESOURCE_EXHAUSTED would send the pod elsewhere)."""
    return CsiError(grpc.StatusCode.UNAVAILABLE, message)


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str] | None:
    """The (code, message) for an expected error, or None for a bug (the caller reports INTERNAL).

    NotImplementedError is what the generated servicer base raises for every RPC a servicer leaves out
    (the ones this driver does not advertise): UNIMPLEMENTED.

    Core classes are looked up along the MRO so a subclass the core adds later keeps its parent's code.
    KernelError and any other core class without a row are unexpected failures, not refusals: None.
    """
    if isinstance(exc, CsiError):
        return exc.code, exc.message
    if isinstance(exc, NotImplementedError):
        return grpc.StatusCode.UNIMPLEMENTED, "this driver does not implement this RPC"
    if isinstance(exc, core.BtrfsCoreError):
        for cls in type(exc).__mro__:
            code = CORE_ERROR_CODES.get(cls)
            if code is not None:
                return code, str(exc) or cls.__name__
    return None
