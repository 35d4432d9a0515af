"""Splitting ffmpeg's MJPEG byte stream (``image2pipe``) into one JPEG per frame.

A frame runs from SOI (FFD8) to EOI (FFD9). Scanning for FFD9 alone is not safe: header
segments (quantisation tables, comments) may hold those two bytes. So the splitter walks
the marker segments by their lengths and scans only entropy-coded data, where 0xFF is
always followed by 0x00 (stuffing), a restart marker or the next real marker.
"""

from __future__ import annotations

SOI = b"\xff\xd8"
_EOI = 0xD9
_SOS = 0xDA
# Markers without a length field: TEM and RST0..RST7.
_STANDALONE = {0x01, *range(0xD0, 0xD8)}

#: A frame larger than this means the stream is not JPEG; a 7680-wide q2 frame is ~20 MB.
MAX_FRAME_BYTES = 64 << 20


class JpegStreamError(ValueError):
    pass


class JpegSplitter:
    """Feed bytes in any chunking; get back each complete JPEG, in order."""

    def __init__(self, max_frame_bytes: int = MAX_FRAME_BYTES):
        self._buf = bytearray()
        self._pos = 0  # where scanning resumes in _buf; 0 = before SOI
        self._in_scan = False  # inside entropy-coded data after SOS
        self._max = max_frame_bytes

    @property
    def pending(self) -> int:
        """Bytes of an unfinished frame held back."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        frames = []
        while (end := self._frame_end()) is not None:
            frames.append(bytes(self._buf[:end]))
            del self._buf[:end]
            self._pos, self._in_scan = 0, False
        if len(self._buf) > self._max:
            raise JpegStreamError(f"a frame exceeds {self._max} bytes without an end marker")
        return frames

    def _frame_end(self) -> int | None:
        """End offset of the first complete frame in the buffer, or None if it is incomplete."""
        buf = self._buf
        if self._pos == 0:
            if len(buf) < 2:
                return None
            if buf[:2] != SOI:
                raise JpegStreamError(f"expected a JPEG start marker, got {bytes(buf[:2]).hex()}")
            self._pos = 2
        while True:
            pos = self._pos
            if self._in_scan:
                ff = buf.find(b"\xff", pos)
                if ff < 0 or ff + 1 >= len(buf):
                    self._pos = len(buf) if ff < 0 else ff
                    return None
                code = buf[ff + 1]
                if code == 0x00 or code in _STANDALONE:
                    self._pos = ff + 2
                    continue
                if code == 0xFF:  # fill byte before a marker
                    self._pos = ff + 1
                    continue
                self._in_scan = False
                self._pos = pos = ff
            if pos + 2 > len(buf):
                return None
            if buf[pos] != 0xFF:
                raise JpegStreamError(f"expected a JPEG marker at offset {pos}, got {buf[pos]:#04x}")
            code = buf[pos + 1]
            if code == 0xFF:
                self._pos = pos + 1
                continue
            if code == _EOI:
                return pos + 2
            if code in _STANDALONE:
                self._pos = pos + 2
                continue
            if pos + 4 > len(buf):
                return None
            length = int.from_bytes(buf[pos + 2:pos + 4], "big")
            if length < 2:
                raise JpegStreamError(f"bad JPEG segment length {length} at offset {pos}")
            if pos + 2 + length > len(buf):
                return None
            self._pos = pos + 2 + length
            self._in_scan = code == _SOS
