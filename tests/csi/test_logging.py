"""What one RPC log line may carry: identifying fields, never secrets, bounded; text and JSON formats."""

import io
import json
import logging
import sys

from csi.logging import JsonFormatter, TextFormatter, request_fields
from csi.pb import csi_pb2


def test_request_fields_are_ids_only() -> None:
    request = csi_pb2.CreateVolumeRequest(
        name="pvc-1",
        secrets={"token": "s3cr3t"},
        parameters={"csi.storage.k8s.io/pvc/name": "data"},
        volume_content_source=csi_pb2.VolumeContentSource(
            snapshot=csi_pb2.VolumeContentSource.SnapshotSource(snapshot_id="snap-1")
        ),
    )
    assert request_fields(request) == {"name": "pvc-1", "source_snapshot_id": "snap-1"}
    publish = csi_pb2.NodePublishVolumeRequest(
        volume_id="v", target_path="/t", secrets={"k": "v"}, publish_context={"a": "b"}
    )
    assert request_fields(publish) == {"volume_id": "v", "target_path": "/t"}
    assert request_fields(csi_pb2.ProbeRequest()) == {}


def test_long_values_are_cut() -> None:
    fields = request_fields(csi_pb2.DeleteVolumeRequest(volume_id="x" * 10240))
    assert len(fields["volume_id"]) < 300


def record(fields: dict[str, object]) -> logging.LogRecord:
    rec = logging.LogRecord("csi.rpc", logging.INFO, __file__, 1, "CreateVolume", None, None)
    rec.fields = fields
    return rec


def test_text_format_quotes_what_needs_it() -> None:
    line = TextFormatter().format(
        record({"method": "CreateVolume", "code": "OK", "name": "a b", "empty": ""})
    )
    assert line.endswith('INFO csi.rpc CreateVolume code=OK name="a b" empty=""')


def test_json_format_is_one_object_per_line() -> None:
    line = JsonFormatter().format(record({"method": "CreateVolume", "code": "OK", "duration_ms": 1.5}))
    entry = json.loads(line)
    assert "\n" not in line
    assert entry["msg"] == "CreateVolume" and entry["code"] == "OK" and entry["duration_ms"] == 1.5
    assert entry["level"] == "INFO" and entry["logger"] == "csi.rpc" and entry["time"].endswith("Z")


def test_setup_routes_driver_and_core_loggers() -> None:
    from csi.logging import setup

    buffer = io.StringIO()
    try:
        setup("WARNING", "json", buffer)
        logging.getLogger("btrfs_core.pool").warning("core says")
        logging.getLogger("csi.rpc").info("below the level")
        lines = buffer.getvalue().splitlines()
        assert [json.loads(line)["msg"] for line in lines] == ["core says"]
    finally:
        for name in ("csi", "btrfs_core"):
            logger = logging.getLogger(name)
            logger.handlers.clear()
            logger.setLevel(logging.NOTSET)
            logger.propagate = True


def test_text_format_escapes_control_characters() -> None:
    # A name or path from a request must neither drive the terminal (ESC), rewrite the line (CR), cut it
    # (NUL) nor forge a second line; the message and each field are escaped, backslashes doubled.
    hostile = "a\x1b[31mred\r\x00\nFAKE \x9b\u202e\\x1b"
    rec = record({"method": "CreateVolume", "code": "OK", "name": hostile, "target_path": "/t\x07"})
    rec.msg = "message " + hostile
    line = TextFormatter().format(rec)
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F or c == "\u202e" for c in line)
    shown = "a\\x1b[31mred\\r\\x00\\nFAKE \\x9b\\u202e\\\\x1b"
    fields = f'method=CreateVolume code=OK name="{shown}" target_path=/t\\x07'
    assert line.endswith(f"csi.rpc message {shown} {fields}")


def test_text_format_escapes_what_a_traceback_quotes() -> None:
    try:
        raise ValueError("volume \x1b]0;pwned\x07")
    except ValueError:
        rec = record({"method": "CreateVolume", "code": "INTERNAL"})
        rec.exc_info = sys.exc_info()
    lines = TextFormatter().format(rec).split("\n")
    assert lines[0].endswith("code=INTERNAL") and lines[1] == "Traceback (most recent call last):"
    assert lines[-1] == "ValueError: volume \\x1b]0;pwned\\x07"
