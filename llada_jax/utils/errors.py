"""Turning library exceptions into the one-sentence messages users get."""
from __future__ import annotations


def first_line(error: BaseException, limit: int = 160) -> str:
    """The gist of an exception for a one-sentence message (Orbax/TensorStore errors span many lines)."""
    text = (str(error).strip().splitlines() or [error.__class__.__name__])[0]
    text = text.split(" [source locations=")[0].split("See full TensorStore details")[0].strip()
    return (text[:limit] + "...") if len(text) > limit else text
