"""What native libraries print straight to the process's stderr (file descriptor 2), caught for a while.

libtpu prints start-up warnings that read like failures ("could not determine TPU accelerator type ...") when
it only describes a topology for an ahead-of-time compile on a machine without TPUs; Python cannot filter
those, so the descriptor itself is pointed at a temporary file during that call and the text kept for the
error message should the call fail.
"""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile


class Captured:
    text = ""


@contextlib.contextmanager
def captured_stderr():
    """Yields a Captured whose `text` holds what was written to descriptor 2 during the block (set at its end)."""
    box = Captured()
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield box
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            box.text = sink.read().decode("utf-8", errors="replace")
