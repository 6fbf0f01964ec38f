"""Minimal safetensors reader/writer over numpy memmaps.

Written here (rather than via `safetensors.numpy`) so bfloat16 tensors load as zero-copy
`ml_dtypes.bfloat16` views of the file, tensors can be read one at a time without loading a
shard, and a shard can be written tensor by tensor without holding it all in memory.
Format: 8-byte little-endian header length, a JSON header {name: {dtype, shape,
data_offsets: [begin, end]}, "__metadata__": {...}}, then the raw little-endian data.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Callable, Iterable

import ml_dtypes
import numpy as np

from prorl_jax.errors import CheckpointError

DTYPES = {"F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
          "BF16": np.dtype(ml_dtypes.bfloat16)}
_NAMES = {v: k for k, v in DTYPES.items()}
_MAX_HEADER = 100 * 1024 * 1024


class SafetensorsFile:
    """Lazily readable tensors of one .safetensors file."""

    def __init__(self, path: str):
        self.path = path
        try:
            size = os.path.getsize(path)
            with open(path, "rb") as f:
                raw = f.read(8)
                if len(raw) < 8:
                    raise CheckpointError(f"{path}: corrupt safetensors file (shorter than its header)")
                (n,) = struct.unpack("<Q", raw)
                if n > min(size - 8, _MAX_HEADER):
                    raise CheckpointError(f"{path}: corrupt safetensors file (header length {n})")
                header = json.loads(f.read(n))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path}: cannot read safetensors header ({e})") from e
        if not isinstance(header, dict):
            raise CheckpointError(f"{path}: corrupt safetensors header")
        header.pop("__metadata__", None)
        self._data_start = 8 + n
        self._data_size = size - self._data_start
        self.entries: dict[str, tuple[np.dtype, tuple[int, ...], int, int]] = {}
        for name, info in header.items():
            try:
                dtype_name, shape, (begin, end) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
            except (KeyError, TypeError, ValueError) as e:
                raise CheckpointError(f"{path}: corrupt header entry for tensor {name}") from e
            if dtype_name not in DTYPES:
                raise CheckpointError(
                    f"{path}: tensor {name} has dtype {dtype_name}; supported: {', '.join(DTYPES)}")
            dtype = DTYPES[dtype_name]
            if end - begin != math.prod(shape) * dtype.itemsize or not 0 <= begin <= end <= self._data_size:
                raise CheckpointError(f"{path}: tensor {name} has data offsets outside the file "
                                      "or inconsistent with its shape (corrupt or truncated)")
            self.entries[name] = (dtype, shape, begin, end)
        self._mmap = None

    def shape(self, name: str) -> tuple[int, ...]:
        return self.entries[name][1]

    def get(self, name: str) -> np.ndarray:
        """The tensor as a read-only numpy view of the file (no copy)."""
        dtype, shape, begin, end = self.entries[name]
        if self._mmap is None:
            if self._data_size == 0:
                return np.zeros(shape, dtype)
            self._mmap = np.memmap(self.path, np.uint8, "r", offset=self._data_start)
        return self._mmap[begin:end].view(dtype).reshape(shape)


def write(path: str, names: Iterable[str], shapes: dict[str, tuple[int, ...]],
          dtypes: dict[str, np.dtype], fetch: Callable[[str], np.ndarray]) -> None:
    """Write tensors `names` to `path`, calling fetch(name) for each one just in time.

    Args:
      names: tensor names in file order.
      shapes, dtypes: per name, known before the data (the header comes first).
      fetch: returns the numpy array for a name; it must match shapes/dtypes.
    """
    names = list(names)
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name in names:
        dtype = np.dtype(dtypes[name])
        nbytes = math.prod(shapes[name]) * dtype.itemsize
        header[name] = {"dtype": _NAMES[dtype], "shape": list(shapes[name]),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # data starts 8-byte aligned, as the reference writer does
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name in names:
            arr = np.ascontiguousarray(fetch(name))
            if arr.shape != tuple(shapes[name]) or arr.dtype != dtypes[name]:
                raise ValueError(f"tensor {name}: got {arr.shape} {arr.dtype}, planned "
                                 f"{shapes[name]} {dtypes[name]}")
            f.write(arr.tobytes())
    os.replace(tmp, path)
