"""A most-significant-bit-first reader, with the Exp-Golomb and LEB128 forms codecs use."""

from __future__ import annotations


class BitReader:
    """Reads bits from ``data``; reading past the end raises ``ValueError``."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._position = 0

    def bits(self, count: int) -> int:
        """The next ``count`` bits as an unsigned integer."""
        value = 0
        for _ in range(count):
            byte_index = self._position >> 3
            if byte_index >= len(self._data):
                raise ValueError("bitstream ended early")
            bit = (self._data[byte_index] >> (7 - (self._position & 7))) & 1
            value = (value << 1) | bit
            self._position += 1
        return value

    def flag(self) -> bool:
        """The next bit as a boolean."""
        return self.bits(1) == 1

    def ue(self) -> int:
        """An unsigned Exp-Golomb code (H.264 ``ue(v)``)."""
        zeros = 0
        while self.bits(1) == 0:
            zeros += 1
            if zeros > 31:
                raise ValueError("Exp-Golomb code too long")
        return (1 << zeros) - 1 + self.bits(zeros)

    def se(self) -> int:
        """A signed Exp-Golomb code (H.264 ``se(v)``)."""
        code = self.ue()
        return (code + 1) // 2 if code & 1 else -(code // 2)


def read_leb128(data: bytes, offset: int) -> tuple[int, int]:
    """An AV1 ``leb128()`` value at ``offset``: (value, offset after it)."""
    value = 0
    for index in range(8):
        if offset >= len(data):
            raise ValueError("leb128 ended early")
        byte = data[offset]
        offset += 1
        value |= (byte & 0x7F) << (index * 7)
        if not byte & 0x80:
            return value, offset
    raise ValueError("leb128 too long")
