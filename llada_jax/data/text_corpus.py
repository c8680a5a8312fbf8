"""The demo corpus: CPython's bundled documentation (`pydoc_data.topics`), optionally plus the standard
library's own source. Real English and code that every Python install has, so `llada-jax train` runs with
no download; sources.py turns these documents into a prepared dataset like any other source.
"""
from __future__ import annotations

import glob
import os
import sysconfig


def pydoc_documents(include_stdlib_source: bool = False) -> list[str]:
    from pydoc_data import topics

    docs = [topics.topics[k] for k in sorted(topics.topics)]
    if include_stdlib_source:
        stdlib = sysconfig.get_paths()["stdlib"]
        for path in sorted(glob.glob(os.path.join(stdlib, "*.py"))):
            with open(path, encoding="utf-8", errors="replace") as f:
                docs.append(f.read())
    return docs
