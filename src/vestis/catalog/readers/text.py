"""Reading a catalogue's text files whatever encoding a spreadsheet saved them in.

CSV exports from Excel on Windows are often Windows-1252, not UTF-8: rather than fail on the first accented byte,
a file that is not UTF-8 is read as Windows-1252 (Latin-1 where even that fails: every byte is a Latin-1
character), with one warning that names the first bad byte, its line and column, so a wrong guess can be found.
"""

from __future__ import annotations

import io
from pathlib import Path

FALLBACKS = ("cp1252", "latin-1")


def first_bad_byte(data: bytes, e: UnicodeDecodeError) -> str:
    """'byte 0xe8 at line 2, column 10' for the start of a decoding error in `data`."""
    line = data.count(b"\n", 0, e.start) + 1
    column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
    return f"byte 0x{data[e.start]:02x} at line {line}, column {column}"


def open_text(path: Path, report=None) -> io.StringIO:
    """The whole text of `path` (a UTF-8 byte-order mark dropped), as a stream for `csv.reader` (newlines kept
    as they are); `report.warn("not_utf8", ...)` when it had to fall back to another encoding."""
    path = Path(path)
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        for encoding in FALLBACKS:
            try:
                text = data.decode(encoding)
                break
            except UnicodeDecodeError:
                continue
        if report is not None:
            report.warn("not_utf8", f"{path.name} is not UTF-8 ({first_bad_byte(data, e)}); read as "
                                    f"{'Windows-1252' if encoding == 'cp1252' else 'Latin-1'}: check its accented values, "
                                    f"or save it as UTF-8")
    return io.StringIO(text, newline="")
