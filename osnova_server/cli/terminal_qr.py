"""A QR code drawn with block characters that scans on dark and light terminals alike.

The `qrcode` library makes the matrix (error correction L, the standard's 4-module quiet zone);
drawing is done here because its own `print_ascii` relies on the terminal's colours (dark on a
light theme, inverted on a dark one) and knows only half blocks. Two drawings:

- half blocks (`▀▄█`, one character = 1 × 2 modules), which every terminal font has;
- sextants (U+1FB00..U+1FB3B, one character = 2 × 3 modules), for when half blocks would not
  fit the terminal: the pairing payload (~240 bytes, version 10, 65 modules with the quiet zone)
  needs 33 lines of half blocks but only 22 of sextants.

On a terminal, each line sets black on white itself (and resets at its end), so the code never
depends on the theme; written to a file or a pipe, it is plain characters, dark on light.
"""

from __future__ import annotations

from typing import Final

QUIET_ZONE: Final = 4
_DARK_ON_LIGHT: Final = "\x1b[38;5;16;48;5;231m"  # the 256-colour palette's pure black on pure white
_RESET: Final = "\x1b[0m"
_HALF_BLOCKS: Final = {(False, False): " ", (True, False): "▀", (False, True): "▄", (True, True): "█"}
# Sextant bits in Unicode's order: 1 top left, 2 top right, 4 middle left, 8 middle right,
# 16 bottom left, 32 bottom right. The two full columns are the older half blocks.
_LEFT_COLUMN: Final = 1 | 4 | 16
_RIGHT_COLUMN: Final = 2 | 8 | 32
_FIRST_SEXTANT: Final = 0x1FB00


def qr_matrix(data: str) -> list[list[bool]]:
    """The modules of the smallest QR code (error correction L) holding `data`, quiet zone included."""
    import qrcode  # type: ignore[import-untyped]  # no stubs published

    code = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_L, border=QUIET_ZONE)
    code.add_data(data)
    code.make(fit=True)
    return [[bool(module) for module in row] for row in code.get_matrix()]


def sextant(bits: int) -> str:
    """The character whose dark sixths are `bits` (Unicode's sextant order)."""
    if bits == 0:
        return " "
    if bits == _LEFT_COLUMN | _RIGHT_COLUMN:
        return "█"
    if bits == _LEFT_COLUMN:
        return "▌"
    if bits == _RIGHT_COLUMN:
        return "▐"
    # The block runs through every other value in order, skipping the two columns.
    return chr(_FIRST_SEXTANT + bits - 1 - (bits > _LEFT_COLUMN) - (bits > _RIGHT_COLUMN))


def _module(matrix: list[list[bool]], row: int, column: int) -> bool:
    """A module, light beyond the matrix (the padding of a last partial line or column)."""
    return row < len(matrix) and column < len(matrix[row]) and matrix[row][column]


def half_block_lines(matrix: list[list[bool]]) -> list[str]:
    """Two module rows per line, one column per character."""
    return [
        "".join(_HALF_BLOCKS[(_module(matrix, row, x), _module(matrix, row + 1, x))] for x in range(len(matrix[0])))
        for row in range(0, len(matrix), 2)
    ]


def sextant_lines(matrix: list[list[bool]]) -> list[str]:
    """Three module rows and two columns per character."""
    lines = []
    for row in range(0, len(matrix), 3):
        line = []
        for x in range(0, len(matrix[0]), 2):
            bits = 0
            for bit, (dy, dx) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1))):
                if _module(matrix, row + dy, x + dx):
                    bits |= 1 << bit
            line.append(sextant(bits))
        lines.append("".join(line))
    return lines


def draw(data: str, max_lines: int, color: bool, max_columns: int = 80) -> list[str]:
    """`data` as QR lines: half blocks if they fit in `max_lines` × `max_columns`, else sextants; coloured for a terminal."""
    matrix = qr_matrix(data)
    lines = half_block_lines(matrix)
    if len(lines) > max_lines or len(lines[0]) > max_columns:
        lines = sextant_lines(matrix)
    return [f"{_DARK_ON_LIGHT}{line}{_RESET}" for line in lines] if color else lines
