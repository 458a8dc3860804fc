"""What a person would see on a terminal: a small VT100/xterm screen model fed with a program's output.

Enough for shells, REPLs and full-screen programs to read right for a model (``shell_read(mode="screen")``):
printable text with autowrap (wide characters take two cells), CR, LF, BS, TAB; ESC 7/8, D, E, M, c; CSI cursor
moves (A-H, f, d, `), erase in display/line (J, K), insert/delete lines and characters (L, M, @, P, X), scroll
(S, T) within a scroll region (r), save/restore (s, u), and the private modes 1 (application cursor keys, which
``keys`` reads) and 47/1047/1049 (the alternate screen). SGR (colours), OSC (titles), charsets, bracketed paste
and anything unknown are parsed and dropped. No scrollback: what scrolled off is gone, as on the screen.

Also ``strip_controls``: output as a log of lines (``shell_read(mode="new")``), escape sequences removed.
Standard library only (the agent imports it).
"""

from __future__ import annotations

import codecs
import re
import unicodedata
from dataclasses import dataclass
from typing import Final

__all__ = ["Screen", "strip_controls"]

_PRINTABLE: Final = re.compile(r"[^\x00-\x1f\x7f-\x9f]+")
_CSI_FINAL: Final = re.compile(r"[\x40-\x7e]")
_ALT_MODES: Final = frozenset({47, 1047, 1049})
_WIDE: Final = frozenset({"W", "F"})


def _width(ch: str) -> int:
    if ch.isascii():
        return 1
    if unicodedata.combining(ch):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in _WIDE else 1


@dataclass(slots=True)
class _Cursor:
    row: int = 0
    col: int = 0
    wrap_pending: bool = False  # the last column was written: the next character wraps first (xterm's way)


class Screen:
    """A ``rows`` x ``cols`` screen; ``feed`` bytes, read ``lines()`` and ``cursor``."""

    def __init__(self, rows: int, cols: int) -> None:
        self._reset(rows, cols)

    def _reset(self, rows: int, cols: int) -> None:
        self.rows, self.cols = rows, cols
        self.cursor = _Cursor()
        self.app_cursor_keys = False
        self.alternate = False
        self._main: list[list[str]] = self._blank_grid()
        self._grid = self._main
        self._saved = _Cursor()
        self._saved_main = _Cursor()
        self._top, self._bottom = 0, rows - 1
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""  # an escape sequence cut by the end of a chunk

    # --- reading ------------------------------------------------------------------------------------

    def lines(self) -> list[str]:
        """Each row's text without trailing blanks (a wide character's second cell is not repeated)."""
        return ["".join(row).rstrip() for row in self._grid]

    def text(self) -> str:
        """The screen as text, trailing blank rows dropped."""
        lines = self.lines()
        while lines and not lines[-1]:
            lines.pop()
        return "\n".join(lines)

    # --- writing ------------------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        text = self._pending + self._decoder.decode(data)
        self._pending = ""
        i, n = 0, len(text)
        while i < n:
            match = _PRINTABLE.match(text, i)
            if match is not None:
                self._print(match.group())
                i = match.end()
                continue
            ch = text[i]
            if ch == "\x1b":
                end = self._escape(text, i)
                if end < 0:  # incomplete: keep it for the next chunk (bounded: a runaway sequence is dropped)
                    self._pending = text[i:] if n - i < 4096 else ""
                    return
                i = end
                continue
            self._control(ch)
            i += 1

    def resize(self, rows: int, cols: int) -> None:
        for grid in {id(self._main): self._main, id(self._grid): self._grid}.values():
            del grid[rows:]
            for row in grid:
                del row[cols:]
                row.extend(" " * (cols - len(row)))
            grid.extend([" "] * cols for _ in range(rows - len(grid)))
        self.rows, self.cols = rows, cols
        self._top, self._bottom = 0, rows - 1
        self.cursor.row = min(self.cursor.row, rows - 1)
        self.cursor.col = min(self.cursor.col, cols - 1)
        self.cursor.wrap_pending = False

    # --- internals ----------------------------------------------------------------------------------

    def _blank_grid(self) -> list[list[str]]:
        return [[" "] * self.cols for _ in range(self.rows)]

    def _print(self, text: str) -> None:
        cur, grid = self.cursor, self._grid
        for ch in text:
            width = _width(ch)
            if width == 0:  # a combining mark joins the cell before it
                col = max(cur.col - (0 if cur.wrap_pending else 1), 0)
                grid[cur.row][col] += ch
                continue
            if cur.wrap_pending or cur.col + width > self.cols:
                cur.col = 0
                self._linefeed()
            cur.wrap_pending = False
            grid[cur.row][cur.col] = ch
            if width == 2 and cur.col + 1 < self.cols:
                grid[cur.row][cur.col + 1] = ""
            if cur.col + width >= self.cols:
                cur.col = self.cols - 1
                cur.wrap_pending = True
            else:
                cur.col += width

    def _control(self, ch: str) -> None:
        cur = self.cursor
        if ch == "\r":
            cur.col, cur.wrap_pending = 0, False
        elif ch in "\n\x0b\x0c":
            self._linefeed()
            cur.wrap_pending = False
        elif ch == "\b":
            if cur.wrap_pending:
                cur.wrap_pending = False
            else:
                cur.col = max(cur.col - 1, 0)
        elif ch == "\t":
            cur.col = min((cur.col // 8 + 1) * 8, self.cols - 1)
            cur.wrap_pending = False
        # BEL, SO/SI and the C1 controls change nothing a reader sees

    def _linefeed(self) -> None:
        if self.cursor.row == self._bottom:
            self._scroll_up(1)
        elif self.cursor.row < self.rows - 1:
            self.cursor.row += 1

    def _scroll_up(self, count: int) -> None:
        top, bottom = self._top, self._bottom
        for _ in range(min(count, bottom - top + 1)):
            del self._grid[top]
            self._grid.insert(bottom, [" "] * self.cols)

    def _scroll_down(self, count: int) -> None:
        top, bottom = self._top, self._bottom
        for _ in range(min(count, bottom - top + 1)):
            del self._grid[bottom]
            self._grid.insert(top, [" "] * self.cols)

    def _escape(self, text: str, i: int) -> int:
        """Act on the escape sequence at ``text[i]``; the index after it, or -1 when it is not complete yet."""
        if i + 1 >= len(text):
            return -1
        kind = text[i + 1]
        if kind == "[":
            match = _CSI_FINAL.search(text, i + 2)
            if match is None:
                return -1
            self._csi(text[i + 2 : match.start()], match.group())
            return match.end()
        if kind == "]":  # OSC: to BEL or ST
            for end in range(i + 2, len(text)):
                if text[end] == "\x07":
                    return end + 1
                if text[end] == "\x1b" and end + 1 < len(text) and text[end + 1] == "\\":
                    return end + 2
            return -1
        if kind in "()*+#%":  # charset designation and the like: one more character
            return i + 3 if i + 2 < len(text) else -1
        cur = self.cursor
        if kind == "7":
            self._saved = _Cursor(cur.row, cur.col)
        elif kind == "8":
            cur.row, cur.col, cur.wrap_pending = self._saved.row, self._saved.col, False
        elif kind == "D":
            self._linefeed()
        elif kind == "E":
            cur.col = 0
            self._linefeed()
        elif kind == "M":
            if cur.row == self._top:
                self._scroll_down(1)
            elif cur.row > 0:
                cur.row -= 1
        elif kind == "c":
            self._reset(self.rows, self.cols)
        return i + 2

    def _csi(self, body: str, final: str) -> None:
        private = body.startswith("?")
        fields = body.lstrip("?>=<").split(";")
        params = [int(f) if f.isdigit() else 0 for f in fields]
        first = params[0] if params else 0
        count = max(first, 1)
        cur = self.cursor
        if final in "hl":
            if private:
                self._modes(params, final == "h")
            return
        if private or final == "m":
            return
        cur.wrap_pending = False
        last_row, last_col = self.rows - 1, self.cols - 1
        if final == "A":
            cur.row = max(cur.row - count, self._top if cur.row >= self._top else 0)
        elif final in "Be":
            cur.row = min(cur.row + count, self._bottom if cur.row <= self._bottom else last_row)
        elif final in "Ca":
            cur.col = min(cur.col + count, last_col)
        elif final == "D":
            cur.col = max(cur.col - count, 0)
        elif final in "EF":
            cur.row = min(cur.row + count, last_row) if final == "E" else max(cur.row - count, 0)
            cur.col = 0
        elif final in "G`":
            cur.col = min(count - 1, last_col)
        elif final == "d":
            cur.row = min(count - 1, last_row)
        elif final in "Hf":
            row = params[0] if params else 1
            col = params[1] if len(params) > 1 else 1
            cur.row, cur.col = min(max(row, 1), self.rows) - 1, min(max(col, 1), self.cols) - 1
        elif final == "J":
            self._erase_display(first)
        elif final == "K":
            self._erase_line(first)
        elif final in "LM" and self._top <= cur.row <= self._bottom:
            top = self._top
            self._top = cur.row
            (self._scroll_down if final == "L" else self._scroll_up)(count)
            self._top = top
            cur.col = 0
        elif final in "@P":
            cells = self._grid[cur.row]
            count = min(count, self.cols - cur.col)
            if final == "@":
                cells[cur.col : cur.col] = [" "] * count
                del cells[self.cols :]
            else:
                del cells[cur.col : cur.col + count]
                cells.extend([" "] * count)
        elif final == "X":
            cells = self._grid[cur.row]
            for c in range(cur.col, min(cur.col + count, self.cols)):
                cells[c] = " "
        elif final in "ST":
            (self._scroll_up if final == "S" else self._scroll_down)(count)
        elif final == "r":
            top = (params[0] if params and params[0] else 1) - 1
            bottom = (params[1] if len(params) > 1 and params[1] else self.rows) - 1
            if 0 <= top < bottom < self.rows:
                self._top, self._bottom = top, bottom
                cur.row, cur.col = 0, 0
        elif final == "s":
            self._saved = _Cursor(cur.row, cur.col)
        elif final == "u":
            cur.row, cur.col = self._saved.row, self._saved.col

    def _modes(self, params: list[int], on: bool) -> None:
        for mode in params:
            if mode == 1:
                self.app_cursor_keys = on
            elif mode in _ALT_MODES and on != self.alternate:
                self.alternate = on
                if on:
                    self._saved_main = _Cursor(self.cursor.row, self.cursor.col)
                    self._grid = self._blank_grid()
                else:
                    self._grid = self._main
                    if mode == 1049:
                        self.cursor = _Cursor(self._saved_main.row, self._saved_main.col)

    def _erase_display(self, how: int) -> None:
        cur = self.cursor
        if how == 0:
            self._erase_line(0)
            rows = range(cur.row + 1, self.rows)
        elif how == 1:
            self._erase_line(1)
            rows = range(cur.row)
        else:
            rows = range(self.rows)
        for r in rows:
            self._grid[r] = [" "] * self.cols

    def _erase_line(self, how: int) -> None:
        row, col = self._grid[self.cursor.row], self.cursor.col
        span = range(col, self.cols) if how == 0 else range(col + 1) if how == 1 else range(self.cols)
        for c in span:
            if c < self.cols:
                row[c] = " "


_ESCAPES: Final = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"  # CSI
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)"  # OSC to BEL or ST
    r"|\x1b[()*+#%]."  # charsets and the like
    r"|\x1b[@-_a-z0-9=<>]"  # two-character escapes
)
_CONTROLS: Final = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def strip_controls(text: str) -> str:
    """``text`` with escape sequences and control characters removed and line ends as ``\\n`` (``\\r\\n`` and a
    lone ``\\r`` alike: a rewritten line, such as a progress bar's, then shows each version once)."""
    text = _ESCAPES.sub("", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return _CONTROLS.sub("", text)
