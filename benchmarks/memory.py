"""Peak memory of one call: resident high-water mark after it minus resident memory before.

The process resets its high-water mark (/proc/self/clear_refs) just before the call, so the
number is the most physical memory the call itself held at once (temporaries and result),
not what was loaded before. Linux only; None elsewhere.
"""

from __future__ import annotations

import re
import time
from pathlib import Path


def proc_status(field: str) -> int | None:
    """A field of /proc/self/status in bytes (VmRSS, VmHWM, VmSize), or None off Linux."""
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) * 1024 if match else None


def reset_peak() -> bool:
    """Reset this process's resident high-water mark (VmHWM) to its current RSS."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def measure_once(fn):
    """Run fn once: (result, seconds, peak extra resident bytes or None)."""
    before = proc_status("VmRSS")
    can_peak = before is not None and reset_peak()
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    peak = proc_status("VmHWM") if can_peak else None
    return result, seconds, (peak - before if peak is not None else None)
