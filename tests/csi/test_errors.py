"""The one error table: every typed core error has its CSI code, everything else is INTERNAL."""

import grpc
import pytest

from btrfs_core import errors as core
from csi.errors import CORE_ERROR_CODES, CsiError, aborted, status_for

EXPECTED = {
    core.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    core.NotFound: grpc.StatusCode.NOT_FOUND,
    core.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    core.CapacityOutOfRange: grpc.StatusCode.OUT_OF_RANGE,
    core.InsufficientCapacity: grpc.StatusCode.RESOURCE_EXHAUSTED,
    core.InUse: grpc.StatusCode.FAILED_PRECONDITION,
    core.QuotaDisabled: grpc.StatusCode.FAILED_PRECONDITION,
    core.NestedSubvolumes: grpc.StatusCode.FAILED_PRECONDITION,
}


def test_table_is_the_designed_one() -> None:
    designed: dict[type[core.BtrfsCoreError], grpc.StatusCode] = dict(EXPECTED)
    designed[core.ReadOnly] = grpc.StatusCode.FAILED_PRECONDITION  # a KernelError: built with an errno
    assert dict(CORE_ERROR_CODES) == designed


def test_every_refusal_class_of_the_core_has_a_row() -> None:
    # A class the core adds later must be placed in the table on purpose (or be a failure, like KernelError).
    refusals = {
        cls for cls in vars(core).values() if isinstance(cls, type) and issubclass(cls, core.BtrfsCoreError)
    }
    assert refusals - set(CORE_ERROR_CODES) == {core.BtrfsCoreError, core.KernelError}


@pytest.mark.parametrize(("cls", "code"), EXPECTED.items())
def test_status_for_core_errors(cls: type[core.BtrfsCoreError], code: grpc.StatusCode) -> None:
    assert status_for(cls("volume x: why")) == (code, "volume x: why")


def test_a_read_only_pool_is_a_refusal_not_a_failure() -> None:
    # EROFS is a KernelError that carries its errno, and the one kernel error with a code of its own.
    refused = core.ReadOnly("subvolume create", 30, "/pool/.staging/x: Read-only file system")
    assert status_for(refused) == (grpc.StatusCode.FAILED_PRECONDITION, str(refused))


def test_subclasses_inherit_their_parents_code() -> None:
    class SnapshotMissing(core.NotFound):
        pass

    assert status_for(SnapshotMissing("gone")) == (grpc.StatusCode.NOT_FOUND, "gone")


@pytest.mark.parametrize(
    "exc", [core.KernelError("ioctl", 5, "EIO"), core.BtrfsCoreError("?"), RuntimeError("bug"), KeyError("k")]
)
def test_failures_are_not_mapped(exc: Exception) -> None:
    assert status_for(exc) is None  # the interceptor makes these INTERNAL and logs the traceback


def test_csi_errors_carry_their_code() -> None:
    assert status_for(CsiError(grpc.StatusCode.ABORTED, "busy")) == (grpc.StatusCode.ABORTED, "busy")
    assert status_for(aborted("busy")) == (grpc.StatusCode.ABORTED, "busy")


def test_an_rpc_left_to_the_generated_base_is_unimplemented() -> None:
    # What csi_pb2_grpc's servicer base raises for every method a servicer does not define.
    assert status_for(NotImplementedError("Method not implemented!")) == (
        grpc.StatusCode.UNIMPLEMENTED,
        "this driver does not implement this RPC",
    )
