"""Key names a model can send (``shell_write(keys=[...])``) and the bytes a terminal sends for them.

Names are case-insensitive: ``Enter``, ``Tab``, ``Escape``, ``Backspace``, ``Delete``, ``Insert``, ``Space``,
``Up``/``Down``/``Left``/``Right``, ``Home``/``End``, ``PageUp``/``PageDown``, ``F1``-``F12``; ``C-x`` (Ctrl, a
letter or one of ``@[\\]^_ ?``) and ``M-x`` (Alt: ESC then the key, ``M-C-x`` too). Arrows, Home and End follow
the application cursor mode the program set (``ESC O A`` instead of ``ESC [ A``), as a real terminal does.
Standard library only (the agent imports it).
"""

from __future__ import annotations

from typing import Final

__all__ = ["KEY_NAMES", "key_bytes"]

_CURSOR: Final = {"up": "A", "down": "B", "right": "C", "left": "D", "home": "H", "end": "F"}
_PLAIN: Final = {
    "enter": b"\r",
    "return": b"\r",
    "tab": b"\t",
    "escape": b"\x1b",
    "esc": b"\x1b",
    "backspace": b"\x7f",
    "space": b" ",
    "delete": b"\x1b[3~",
    "insert": b"\x1b[2~",
    "pageup": b"\x1b[5~",
    "pagedown": b"\x1b[6~",
    "f1": b"\x1bOP",
    "f2": b"\x1bOQ",
    "f3": b"\x1bOR",
    "f4": b"\x1bOS",
    "f5": b"\x1b[15~",
    "f6": b"\x1b[17~",
    "f7": b"\x1b[18~",
    "f8": b"\x1b[19~",
    "f9": b"\x1b[20~",
    "f10": b"\x1b[21~",
    "f11": b"\x1b[23~",
    "f12": b"\x1b[24~",
}
KEY_NAMES: Final = (
    "Enter, Tab, Escape, Backspace, Delete, Insert, Space, Up, Down, Left, Right, Home, End, PageUp, PageDown, "
    "F1-F12, C-<key> (Ctrl, e.g. C-c, C-d, C-z), M-<key> (Alt, e.g. M-b)"
)


def key_bytes(name: str, app_cursor: bool = False) -> bytes:
    """The bytes for key ``name``; ValueError naming the known keys for anything else."""
    lowered = name.strip().lower()
    if lowered.startswith("m-") and len(lowered) > 2:
        return b"\x1b" + key_bytes(name.strip()[2:], app_cursor)
    if lowered.startswith("c-") and len(lowered) == 3:
        ch = lowered[2]
        if ch == "?":
            return b"\x7f"
        if ch == " ":
            return b"\x00"
        code = ord(ch.upper())
        if 0x40 <= code <= 0x5F:
            return bytes([code - 0x40])
    if lowered in _CURSOR:
        return ("\x1bO" if app_cursor else "\x1b[").encode() + _CURSOR[lowered].encode()
    if lowered in _PLAIN:
        return _PLAIN[lowered]
    if len(name) == 1:  # one character as itself (what M-x needs after its ESC)
        return name.encode()
    raise ValueError(f"unknown key {name!r}; keys are: {KEY_NAMES}")
