"""Reading and writing the safetensors format with NumPy alone, one tensor at a time.

The format is an 8-byte little-endian header length, a JSON header naming each tensor's dtype, shape and
byte range, then the raw little-endian bytes. Writing it directly lets conversion stream tensor by tensor
(no second copy of the model in memory) and handle bfloat16 through ml_dtypes, without needing torch.
"""
from __future__ import annotations

import json
import os
import struct
from typing import Iterator

import ml_dtypes
import numpy as np

from llada_jax.config import ConfigError

DTYPES = {"F32": np.dtype(np.float32), "BF16": np.dtype(ml_dtypes.bfloat16), "F16": np.dtype(np.float16),
          "F64": np.dtype(np.float64), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32)}
NAMES = {v: k for k, v in DTYPES.items()}


def write(path, tensors: list[tuple[str, tuple[int, ...], np.dtype]], produce, metadata: dict | None = None) -> None:
    """Writes `tensors` (name, shape, dtype) to `path`, asking `produce(name)` for each array only when it is
    written, so at most one tensor is materialised at a time."""
    header, offset = {}, 0
    for name, shape, dtype in tensors:
        size = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        header[name] = {"dtype": NAMES[np.dtype(dtype)], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    header["__metadata__"] = {"format": "pt", **(metadata or {})}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name, shape, dtype in tensors:
            array = np.ascontiguousarray(produce(name), dtype=dtype)
            if array.shape != tuple(shape):
                raise ValueError(f"{name}: produced shape {array.shape}, planned {tuple(shape)}")
            f.write(array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes())


def read_header(path) -> tuple[dict, int]:
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise ConfigError(f"{path} is not a safetensors file (too short); re-download or re-export it")
        (length,) = struct.unpack("<Q", raw)
        try:
            header = json.loads(f.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ConfigError(f"{path} has a corrupt safetensors header; re-download or re-export it") from None
    if not isinstance(header, dict):
        raise ConfigError(f"{path} has a corrupt safetensors header; re-download or re-export it")
    header.pop("__metadata__", None)
    _check_data_present(path, header, 8 + length)
    return header, 8 + length


def _check_data_present(path, header: dict, start: int) -> None:
    """A truncated download has a complete header but too few bytes after it: refuse it before any reshape."""
    try:
        end = max((int(info["data_offsets"][1]) for info in header.values()), default=0)
    except (TypeError, KeyError, IndexError, ValueError):
        raise ConfigError(f"{path} has a corrupt safetensors header; re-download or re-export it") from None
    size = os.path.getsize(path)
    if size < start + end:
        raise ConfigError(f"{path} is truncated ({size:,} bytes, its header needs {start + end:,}); "
                          "re-download or re-export it")


def iterate(path) -> Iterator[tuple[str, np.ndarray]]:
    """(name, array) for every tensor, memory-mapped: only the tensor being used is read from disk."""
    header, start = read_header(path)
    data = np.memmap(path, dtype=np.uint8, mode="r")
    for name, info in header.items():
        if info["dtype"] not in DTYPES:
            raise ConfigError(f"{path}: tensor {name} has dtype {info['dtype']}, which llada_jax cannot import")
        begin, end = info["data_offsets"]
        yield name, data[start + begin:start + end].view(DTYPES[info["dtype"]]).reshape(info["shape"])
