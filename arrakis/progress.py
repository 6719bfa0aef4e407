"""The library's progress bars: one wrapper over tqdm whose bar always closes its line.

tqdm redraws its bar in place with carriage returns. A bar made with ``leave=False`` is
erased when it ends, which on a terminal leaves the cursor at the start of a cleared line;
written to a file or a pipe (a log, a notebook's captured stderr, CI) it leaves the bar's
text and the blanks that erased it on a line that never ended, so whatever is written next
continues that line. Off a terminal the finished bar is therefore kept, ending in a newline:
the next output starts on a line of its own either way.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import IO, TypeVar

T = TypeVar("T")


def is_terminal(stream: IO[str]) -> bool:
    """Whether ``stream`` is an interactive terminal (a closed or odd stream counts as not)."""
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def progress(
    iterable: Iterable[T],
    desc: str,
    unit: str = "it",
    *,
    enabled: bool = True,
    leave: bool = False,
    total: int | None = None,
    file: IO[str] | None = None,
) -> Iterator[T]:
    """Iterate ``iterable`` behind a tqdm bar on stderr (or ``file``), labelled ``desc`` and
    counting ``unit``s. ``enabled=False`` shows nothing. ``leave=False`` erases the finished bar
    on a terminal; elsewhere it is kept, so that the bar's line is always closed."""
    if not enabled:
        yield from iterable
        return
    from tqdm import tqdm

    stream = file if file is not None else sys.stderr
    keep = leave or not is_terminal(stream)
    with tqdm(iterable, desc=desc, unit=unit, leave=keep, total=total, file=stream) as bar:
        yield from bar
