"""CreateVolume from a snapshot or volume another node holds: found through the peers, streamed from
there, received into this pool by the core (capacity reserved before the first byte, staging, limit,
commit, rename).

A large transfer outlives the CreateVolume that starts it (the provisioner gives up on a call long
before a GiB has moved): it goes on in the background, one per volume ID. A retried CreateVolume joins
it: ABORTED with the progress while it runs, the volume (OK) once it is done, its error once if it
failed (the next retry starts afresh). The received volume stays out of sight until a CreateVolume
claims it: a transfer nobody asks for within `idle_seconds`, running or done, is cancelled and what it
received removed (the provisioner gave up: the claim was deleted), and a DeleteVolume of its volume ID
cancels it and waits until nothing of it remains.
"""

import logging
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import grpc

from btrfs_core.errors import NotFound
from btrfs_core.models import Source, SourceKind, TuningRequest, Volume
from btrfs_core.pool import Pool
from btrfs_core.transfer import Received
from csi.errors import CsiError, aborted, unavailable
from csi.locks import KeyedTryLock, volume_key
from csi.peer.client import PeerClient
from csi.peer.observer import RECEIVED, TransferObserver

log = logging.getLogger("csi.peer")

PROGRESS_SECONDS = 10.0  # a progress log line at most this often per transfer


@dataclass(frozen=True)
class Request:
    """A CreateVolume as the core takes it."""

    name: str
    required: int
    source: Source
    metadata: Mapping[str, str]
    limit: int
    tuning: TuningRequest


@dataclass
class Transfer:
    volume_id: str
    request: Request
    node: str  # where the source is
    size: int  # the source's size there
    asked: float  # monotonic time the last CreateVolume that asked for it stopped waiting
    moved: int = 0
    done: threading.Event = field(default_factory=threading.Event)
    collected: threading.Event = field(default_factory=threading.Event)
    cancelled: bool = False
    call: "grpc.CallIterator[memoryview] | None" = None  # the Send stream, once it has started
    received: Received | None = None  # done, not claimed nor abandoned yet (RemoteCreates' lock)
    error: BaseException | None = None

    def describe(self) -> str:
        source = self.request.source
        return f"{source.kind.value} {source.id} from node {self.node}"

    def cancel(self) -> Received | None:
        """Stops the stream; what was received already, for the caller to abandon (needs RemoteCreates'
        lock: the receiving thread abandons what it receives once cancelled)."""
        self.cancelled = True
        if self.call is not None:
            self.call.cancel()  # type: ignore[no-untyped-call]
        received, self.received = self.received, None
        return received


class RemoteCreates:
    def __init__(
        self,
        pool: Pool,
        client: PeerClient,
        observer: TransferObserver,
        idle_seconds: float,
        locks: KeyedTryLock,
    ) -> None:
        self._pool = pool
        self._locks = locks  # the CSI servicers': a Create- or DeleteVolume of the ID holds its key
        self._client = client
        self._observer = observer
        self._idle_seconds = idle_seconds
        self._lock = threading.Lock()
        self._transfers: dict[str, Transfer] = {}

    def needed(self, volume_id: str, source: Source | None) -> bool:
        """Whether a create must come from a peer: its source is not here, nor is the volume itself (a
        finished transfer is a local volume like any other), or a transfer of it is under way."""
        with self._lock:
            if volume_id in self._transfers:
                return True
        if source is None:
            return False
        return not (self._holds(source) or self._holds(Source(SourceKind.VOLUME, volume_id)))

    def _holds(self, source: Source) -> bool:
        try:
            if source.kind is SourceKind.SNAPSHOT:
                self._pool.get_snapshot(source.id)
            else:
                self._pool.get_volume(source.id)
        except NotFound:
            return False
        return True

    def create(self, volume_id: str, request: Request, wait: float) -> Volume:
        """The volume, once its transfer is done; starts the transfer when none runs, waits up to `wait`
        seconds for it, then answers ABORTED with its progress."""
        with self._lock:
            transfer = self._transfers.get(volume_id)
        if transfer is None:
            transfer = self._start(volume_id, request)
        elif transfer.cancelled:
            raise aborted(f"volume {volume_id}: its transfer is being cancelled by a delete; retry")
        elif transfer.request != request:
            raise aborted(f"volume {volume_id} is being made from {transfer.describe()} by another request")
        if not self._joined(transfer, wait):
            raise aborted(
                f"volume {volume_id}: receiving {transfer.describe()} in the background, "
                f"{transfer.moved} of about {transfer.size} bytes so far; retry to join it"
            )
        with self._lock:
            if self._transfers.get(volume_id) is transfer:
                del self._transfers[volume_id]
            received, transfer.received = transfer.received, None
        transfer.collected.set()
        if transfer.error is not None:
            raise transfer.error
        # Only a call holding the volume's key cancels a transfer (a delete, _watch): not meanwhile.
        assert received is not None
        try:
            return self._pool.transfers.claim(received)
        except BaseException:
            self._pool.transfers.abandon(received)
            raise

    def _joined(self, transfer: Transfer, wait: float) -> bool:
        """Whether the transfer ends within `wait` seconds; it is idle at the earliest from the end of
        the wait (the caller holds the volume's key meanwhile, which _watch needs)."""
        try:
            return transfer.done.wait(wait)
        finally:
            transfer.asked = time.monotonic()

    def forget(self, volume_id: str, wait: float) -> None:
        """A DeleteVolume of `volume_id`: cancels its transfer, if any, and returns once the transfer has
        let go of everything it had received; ABORTED when that takes longer than `wait` seconds (the
        transfer stays cancelled: a retry waits again). Nothing it received is ever claimed after."""
        with self._lock:
            transfer = self._transfers.get(volume_id)
            received = transfer.cancel() if transfer is not None else None
        if transfer is None:
            return
        if received is not None:
            self._pool.transfers.abandon(received)
        if not transfer.done.wait(wait):
            raise aborted(f"volume {volume_id}: its transfer is being cancelled; retry")
        with self._lock:
            if self._transfers.get(volume_id) is transfer:
                del self._transfers[volume_id]
        transfer.collected.set()
        log.info("transfer cancelled by a delete", extra={"fields": {"volume_id": volume_id}})

    def _start(self, volume_id: str, request: Request) -> Transfer:
        source = request.source
        found = self._client.locate(source)
        if found is None:
            raise NotFound(
                f"{source.kind.value} {source.id} is held by no node of this installation that answers"
            )
        node, size = found
        transfer = Transfer(volume_id, request, node, size, time.monotonic())
        with self._lock:
            self._transfers[volume_id] = transfer
        log.info(
            "transfer started",
            extra={
                "fields": {"volume_id": volume_id, source.kind.value: source.id, "peer": node, "size": size}
            },
        )
        threading.Thread(target=self._run, args=(transfer,), name=f"receive-{volume_id}", daemon=True).start()
        threading.Thread(target=self._watch, args=(transfer,), name=f"watch-{volume_id}", daemon=True).start()
        return transfer

    def _run(self, transfer: Transfer) -> None:
        request = transfer.request
        started = time.monotonic()
        try:
            received = self._pool.transfers.receive(
                request.name,
                request.required,
                request.source,
                transfer.size,
                self._chunks(transfer),
                request.metadata,
                request.limit,
                request.tuning,
            )
        except BaseException as exc:
            transfer.error = exc
            log.warning(
                "transfer failed",
                extra={
                    "fields": {"volume_id": transfer.volume_id, "bytes": transfer.moved, "error": str(exc)}
                },
            )
        else:
            with self._lock:
                kept = not transfer.cancelled
                if kept:
                    transfer.received = received
            if not kept:  # cancelled as the receive ended: nobody will claim it
                self._pool.transfers.abandon(received)
            seconds = time.monotonic() - started
            log.info(
                "transfer done",
                extra={
                    "fields": {
                        "volume_id": transfer.volume_id,
                        "bytes": transfer.moved,
                        "seconds": round(seconds, 3),
                    }
                },
            )
        finally:
            transfer.done.set()

    def _chunks(self, transfer: Transfer) -> Iterator[memoryview]:
        """The send stream from the peer, opened only when the core reads it (after its capacity
        check: no byte moves for a volume this node cannot hold)."""
        if transfer.cancelled:
            raise aborted(f"volume {transfer.volume_id}: transfer cancelled (idle, or deleted)")
        call = self._client.send(transfer.node, transfer.request.source)
        transfer.call = call
        if transfer.cancelled:  # cancelled as the call opened
            call.cancel()
        reported = time.monotonic()
        try:
            for chunk in call:
                transfer.moved += len(chunk)
                self._observer.moved(RECEIVED, len(chunk))
                if time.monotonic() - reported >= PROGRESS_SECONDS:
                    reported = time.monotonic()
                    log.info(
                        "transfer progress",
                        extra={
                            "fields": {
                                "volume_id": transfer.volume_id,
                                "bytes": transfer.moved,
                                "of": transfer.size,
                            }
                        },
                    )
                yield chunk
        except grpc.RpcError as exc:
            raise _stream_error(transfer, exc) from None

    def _watch(self, transfer: Transfer) -> None:
        """Cancels the transfer (and removes what it received) once nobody has asked for it for a while.
        It holds the volume's key meanwhile: a CreateVolume or DeleteVolume of the ID in progress means
        it is not idle, and one that comes meanwhile is ABORTED until nothing of the transfer is left."""
        while True:
            remaining = transfer.asked + self._idle_seconds - time.monotonic()
            if remaining <= 0:
                try:
                    with self._locks.hold(volume_key(transfer.volume_id)):
                        self._cancel_idle(transfer)
                        return
                except CsiError:  # a call of this ID holds it: idle at the earliest once it left
                    remaining = self._idle_seconds
            if transfer.collected.wait(remaining):
                return

    def _cancel_idle(self, transfer: Transfer) -> None:
        with self._lock:
            if self._transfers.get(transfer.volume_id) is not transfer:
                return  # forgotten by a delete, which cancelled it
            del self._transfers[transfer.volume_id]
            running = not transfer.done.is_set()
            received = transfer.cancel()
        if received is not None:
            self._pool.transfers.abandon(received)
        elif not running:
            return  # it failed, and nobody came for its error
        log.warning(
            "transfer cancelled",
            extra={
                "fields": {
                    "volume_id": transfer.volume_id,
                    "bytes": transfer.moved,
                    "idle_seconds": self._idle_seconds,
                    "received": received is not None,  # done, but nobody came to claim it
                }
            },
        )


def _stream_error(transfer: Transfer, exc: grpc.RpcError) -> Exception:
    code = exc.code()
    if code is grpc.StatusCode.NOT_FOUND:
        return NotFound(f"{transfer.describe()}: {exc.details()}")
    if transfer.cancelled:
        return aborted(f"volume {transfer.volume_id}: transfer cancelled (idle, or deleted)")
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED):
        return unavailable(f"receiving {transfer.describe()}: {code.name}: {exc.details()}; retry")
    return CsiError(code, f"receiving {transfer.describe()}: {exc.details()}")
