"""A tiny dependency-free PNG bar chart: approved / edited / rejected per day for the digest."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence

WHITE = (255, 255, 255)
GREY = (200, 200, 200)
COLOURS = ((46, 160, 67), (219, 171, 9), (207, 34, 46))  # approved, edited, rejected


def _png(width: int, height: int, rows: list[bytearray]) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    raw = b"".join(b"\x00" + bytes(row) for row in rows)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )


def bar_chart(days: Sequence[tuple[int, int, int]], *, width: int = 560, height: int = 240) -> bytes:
    """Grouped bars, one group per day (oldest first): approved, edited, rejected counts."""
    rows = [bytearray(WHITE * width) for _ in range(height)]
    margin, base = 20, height - 20
    top = max((max(day) for day in days), default=0) or 1
    group = (width - 2 * margin) // max(1, len(days))
    bar = max(2, (group - 10) // 3)

    def fill(x0: int, x1: int, y0: int, y1: int, colour: tuple[int, int, int]) -> None:
        for y in range(max(0, y0), min(height, y1)):
            for x in range(max(0, x0), min(width, x1)):
                rows[y][3 * x : 3 * x + 3] = bytes(colour)

    fill(margin, width - margin, base, base + 1, GREY)
    for index, counts in enumerate(days):
        left = margin + index * group + 5
        for series, count in enumerate(counts):
            bar_height = round((base - margin) * count / top)
            x = left + series * bar
            fill(x, x + bar - 1, base - bar_height, base, COLOURS[series])
    return _png(width, height, rows)
