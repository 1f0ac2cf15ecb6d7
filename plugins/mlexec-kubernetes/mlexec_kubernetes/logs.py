"""Pod logs read with ``timestamps=true``: printed as they arrive, resumable without repeats.

Each log line arrives as ``<RFC 3339 time> <text>``.  The text is passed on at
once (even a line without its newline yet, such as a progress bar's), the time
is remembered, and after a dropped connection the log is asked for again from
shortly before the last time seen, skipping the lines already printed.
"""

from __future__ import annotations

import calendar
import re
from typing import Callable

#: ``2026-01-01T00:00:01.123456789Z`` (the fraction is optional and of any length).
_TIME = re.compile(rb"^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)$")
_MAX_PREFIX = 64


def parse_time(raw: bytes) -> tuple[int, int] | None:
    """``(epoch seconds, nanoseconds)`` of a log timestamp, or ``None``."""
    m = _TIME.match(raw)
    if not m:
        return None
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    zone = m.group(8)
    if zone != b"Z":
        sign = 1 if zone[:1] == b"+" else -1
        seconds -= sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    nanos = int((m.group(7) or b"0").ljust(9, b"0"))
    return seconds, nanos


class TimestampedLog:
    """Turns ``timestamps=true`` log bytes into the log's own bytes, via ``write``."""

    def __init__(self, write: Callable[[bytes], None], after: tuple[int, int] | None = None) -> None:
        self.write = write
        #: Lines at or before this time were printed already (a resumed stream repeats them).
        self.after = after
        #: The time of the newest line printed.
        self.last = after
        self._prefix = b""
        self._in_line = False
        self._skip = False

    def feed(self, data: bytes) -> None:
        out = []
        i = 0
        while i < len(data):
            if not self._in_line:
                space = data.find(b" ", i)
                if space < 0 and len(self._prefix) + len(data) - i <= _MAX_PREFIX:
                    self._prefix += data[i:]  # the time is cut in two: wait for the rest
                    break
                end = space if space >= 0 else len(data)
                raw = self._prefix + data[i:end]
                self._prefix = b""
                stamp = parse_time(raw)
                self._in_line = True
                if stamp is None:  # not a timestamp after all: it is text
                    self._skip = False
                    out.append(raw + (b" " if space >= 0 else b""))
                else:
                    self._skip = self.after is not None and stamp <= self.after
                    if not self._skip and (self.last is None or stamp > self.last):
                        self.last = stamp
                i = end + 1 if space >= 0 else end
                continue
            newline = data.find(b"\n", i)
            end = len(data) if newline < 0 else newline + 1
            if not self._skip:
                out.append(data[i:end])
            if newline >= 0:
                self._in_line = False
            i = end
        if out:
            self.write(b"".join(out))
