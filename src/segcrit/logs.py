"""Logging: short constant messages with key=value fields on stderr.

Fields come from `extra={...}`; callers never put an email, phone, token or secret in them.
"""

from __future__ import annotations

import logging
import sys

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        when = self.formatTime(record, "%Y-%m-%dT%H:%M:%S")
        base = f"{when} {record.levelname.lower()} {record.name}: {record.getMessage()}"
        fields = " ".join(f"{k}={v}" for k, v in record.__dict__.items() if k not in _STANDARD)
        text = f"{base} {fields}" if fields else base
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def setup_logging(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    root = logging.getLogger("segcrit")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
