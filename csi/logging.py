"""Log set-up (text or JSON lines on stderr) and the fields of the one line logged per RPC.

A request is never logged whole: only the identifying fields below, which are never secrets, cut to a
bounded length. Secrets (fields flagged csi_secret) and mount flags (which may hold credentials) are thus
left out by construction.
"""

import json
import logging
import re
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

from google.protobuf.message import Message

from btrfs_core.text import shortened
from csi.pb import csi_pb2

RPC_LOGGER = "csi.rpc"
# Request fields that identify what an RPC is about; safe to log.
LOGGED_FIELDS = (
    "name",
    "volume_id",
    "snapshot_id",
    "source_volume_id",
    "target_path",
    "volume_path",
    "starting_token",
)
MAX_LOGGED_CHARS = 200
_CSI_SECRET = csi_pb2.csi_secret
# What a terminal or a log viewer would act on instead of showing: C0 and C1 controls (ESC starts escape
# sequences, CR overwrites the line, NUL cuts it), DEL, Unicode line separators and bidi overrides.
# The backslash is escaped too, so an escape in the log always stands for the character it names.
_CONTROL = re.compile("[\\\\\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _is_secret(message: Message, name: str) -> bool:
    field = message.DESCRIPTOR.fields_by_name[name]
    return bool(field.GetOptions().Extensions[_CSI_SECRET])


def _cut(value: str) -> str:
    return shortened(value, MAX_LOGGED_CHARS)


def escape_controls(text: str) -> str:
    """Text with every control character written as a visible escape (\\x1b, \\r, \\u202e)."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


def request_fields(request: Message) -> dict[str, str]:
    """The identifying, non-secret fields a request carries, for its log line."""
    fields: dict[str, str] = {}
    names = request.DESCRIPTOR.fields_by_name
    for name in LOGGED_FIELDS:
        if name in names and not _is_secret(request, name):
            value = getattr(request, name)
            if value:
                fields[name] = _cut(str(value))
    if isinstance(request, csi_pb2.CreateVolumeRequest) and request.HasField("volume_content_source"):
        source = request.volume_content_source
        if source.HasField("snapshot"):
            fields["source_snapshot_id"] = _cut(source.snapshot.snapshot_id)
        elif source.HasField("volume"):
            fields["source_volume_id"] = _cut(source.volume.volume_id)
    return fields


class TextFormatter(logging.Formatter):
    """`2026-01-02T03:04:05.678Z INFO csi.rpc message key=value ...`

    Names and paths come from requests: control characters in them are escaped, so a request can
    neither drive the terminal that shows the log nor forge a line of it.
    """

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        message = escape_controls(record.getMessage())
        line = f"{stamp}.{int(record.msecs):03d}Z {record.levelname} {record.name} {message}"
        fields: Mapping[str, Any] = getattr(record, "fields", {})
        for key, value in fields.items():
            if key == "method" and value == record.msg:
                continue  # already the message of an RPC line
            text = escape_controls(str(value))
            if not text or any(c in text for c in ' ="'):
                text = '"' + text.replace('"', '\\"') + '"'
            line += f" {key}={text}"
        if record.exc_info:
            # A traceback keeps its lines; what the lines quote (an exception's message) is escaped.
            trace = self.formatException(record.exc_info).split("\n")
            line += "\n" + "\n".join(escape_controls(part) for part in trace)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, msg, the record's fields, exc when present."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def setup(level: str = "INFO", fmt: str = "text", stream: TextIO | None = None) -> None:
    """Routes the driver's and the core's loggers to one stream in the chosen format."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    # Neither format shows the caller, thread or process of a record: not collected (the logging
    # HOWTO's optimisations), which saves a stack walk and lookups on the line every mutating call logs.
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    for name in ("csi", "btrfs_core"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level)
        logger.propagate = False
