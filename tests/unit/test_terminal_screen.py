"""The agent's terminal screen model, output stripping and key names (pure code)."""

from __future__ import annotations

import pytest

from nexus.agent.keys import key_bytes
from nexus.agent.screen import Screen, strip_controls


def screen(data: bytes, rows: int = 5, cols: int = 10) -> Screen:
    s = Screen(rows, cols)
    s.feed(data)
    return s


def test_text_line_feeds_carriage_return_backspace_tab() -> None:
    s = screen(b"hello\r\nworld\rW\x08\x08xy\tz")
    assert s.lines()[:2] == ["hello", "xyrld   z"]
    assert (s.cursor.row, s.cursor.col) == (1, 9)


def test_autowrap_is_deferred_to_the_next_character_and_scrolls_at_the_bottom() -> None:
    s = screen(b"0123456789", rows=2, cols=10)
    assert (s.cursor.row, s.cursor.col, s.cursor.wrap_pending) == (0, 9, True)
    s.feed(b"\r\n")  # a CR LF right after the last column makes one line break, not two
    assert s.cursor.row == 1 and s.lines() == ["0123456789", ""]
    s.feed(b"abcdefghijKL")  # wraps past the bottom: the first line scrolls off
    assert s.lines() == ["abcdefghij", "KL"]


def test_cursor_moves_and_erases() -> None:
    s = screen(b"aaaaaaaaaa\r\nbbbbbbbbbb\r\ncccccccccc\x1b[2;3H\x1b[K")
    assert s.lines()[:3] == ["aaaaaaaaaa", "bb", "cccccccccc"]
    s.feed(b"\x1b[1;5H\x1b[1K")  # erase to the start of the line, cursor column included
    assert s.lines()[0] == "     aaaaa"
    s.feed(b"\x1b[3;1H\x1b[2C\x1b[3P")  # delete three characters at column 3
    assert s.lines()[2] == "ccccccc"
    s.feed(b"\x1b[2J")
    assert s.text() == ""


def test_colours_titles_and_unknown_sequences_are_dropped() -> None:
    s = screen(b"\x1b[1;31mred\x1b[0m \x1b]0;title\x07ok\x1b(B\x1b[?2004h!")
    assert s.lines()[0] == "red ok!"


def test_sequences_cut_between_chunks_and_utf8_split_across_chunks() -> None:
    s = Screen(3, 20)
    for part in (b"a\x1b[", b"31", b"mb\xc3", b"\xa9\x1b]0;x", b"\x1b\\c"):
        s.feed(part)
    assert s.lines()[0] == "abéc"


def test_wide_characters_take_two_cells() -> None:
    s = screen("日本x".encode(), cols=6)
    assert s.lines()[0] == "日本x" and s.cursor.col == 5


def test_alternate_screen_is_shown_while_on_and_the_main_screen_comes_back() -> None:
    s = screen(b"shell$ vim\r\n", cols=20)
    s.feed(b"\x1b[?1049h\x1b[H~\r\n~\r\n-- INSERT --")
    assert s.alternate and s.lines()[:3] == ["~", "~", "-- INSERT --"]
    s.feed(b"\x1b[?1049l")
    assert not s.alternate and s.lines()[0] == "shell$ vim" and s.cursor.row == 1


def test_scroll_region_insert_delete_lines_and_reverse_index() -> None:
    s = screen(b"1\r\n2\r\n3\r\n4\r\n5", rows=5, cols=4)
    s.feed(b"\x1b[2;4r\x1b[4;1H\n")  # LF at the region's bottom scrolls only rows 2-4
    assert s.lines() == ["1", "3", "4", "", "5"]
    s.feed(b"\x1b[2;1H\x1bM")  # reverse index at the region's top scrolls it down
    assert s.lines() == ["1", "", "3", "4", "5"]
    s.feed(b"\x1b[r\x1b[1;1H\x1b[2M")
    assert s.lines() == ["3", "4", "5", "", ""]


def test_application_cursor_mode_and_resize() -> None:
    s = screen(b"\x1b[?1h")
    assert s.app_cursor_keys
    s.feed(b"\x1b[?1l" + b"x" * 10)
    assert not s.app_cursor_keys
    s.resize(3, 4)
    assert s.lines() == ["xxxx", "", ""] and (s.cursor.row, s.cursor.col) == (0, 3)
    s.resize(4, 12)
    assert s.lines() == ["xxxx", "", "", ""]


def test_strip_controls_gives_lines_without_escapes() -> None:
    raw = "\x1b[?2004hroot# \x1b[01;32mls\x1b[0m\r\nfile\r\n50%\r100%\r\n\x1b]0;t\x07done\x07"
    assert strip_controls(raw) == "root# ls\nfile\n50%\n100%\ndone"


@pytest.mark.parametrize(
    ("name", "app", "expected"),
    [
        ("Enter", False, b"\r"),
        ("tab", False, b"\t"),
        ("C-c", False, b"\x03"),
        ("C-D", False, b"\x04"),
        ("C-[", False, b"\x1b"),
        ("Up", False, b"\x1b[A"),
        ("Up", True, b"\x1bOA"),
        ("Home", True, b"\x1bOH"),
        ("PageDown", False, b"\x1b[6~"),
        ("F5", False, b"\x1b[15~"),
        ("M-b", False, b"\x1bb"),
        ("M-C-c", False, b"\x1b\x03"),
        ("Backspace", False, b"\x7f"),
    ],
)
def test_key_names(name: str, app: bool, expected: bytes) -> None:
    assert key_bytes(name, app) == expected


def test_an_unknown_key_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown key 'Hyper'.*Enter, Tab"):
        key_bytes("Hyper")
