"""Reading and writing IDX files, the format of MNIST and Fashion-MNIST (plain or gzipped).

An IDX file is a 4-byte magic number ``0x00 0x00 <dtype code> <ndim>``, then ``ndim`` big-endian ``uint32`` sizes,
then the values in C order, big-endian. :func:`read_idx` checks all of it and raises :class:`~deepkd.errors.DataError`
naming the file and the fault when anything is off.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path

import numpy as np
import torch

from deepkd.errors import DataError

__all__ = ["read_idx", "write_idx"]

# IDX dtype code -> big-endian numpy dtype.
_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES: dict[np.dtype, int] = {dt.newbyteorder("="): code for code, dt in _DTYPES.items()}
_GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"IDX file {str(path)!r} does not exist") from None
    except OSError as exc:
        raise DataError(f"cannot read IDX file {str(path)!r}: {exc}") from exc
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"IDX file {str(path)!r} is not a valid gzip stream (corrupt or truncated): {exc}") from exc


def read_idx(path: str | os.PathLike[str]) -> torch.Tensor:
    """Read an IDX file (gzipped or plain, detected from its first bytes) into a tensor.

    Args:
        path: the file, e.g. ``train-images-idx3-ubyte.gz``.

    Returns:
        A tensor of the file's shape and dtype (``uint8`` for (Fashion-)MNIST), in native byte order.

    Raises:
        DataError: the file is missing, unreadable, not IDX, or its data is shorter or longer than its header says.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "x.idx"
    >>> write_idx(p, torch.arange(6, dtype=torch.uint8).reshape(2, 3))
    >>> read_idx(p)
    tensor([[0, 1, 2],
            [3, 4, 5]], dtype=torch.uint8)
    """
    path = Path(path)
    data = _read_bytes(path)
    where = f"IDX file {str(path)!r}"
    if len(data) < 4:
        raise DataError(f"{where} is truncated: {len(data)} bytes, shorter than the 4-byte magic number")
    zero, code, ndim = int.from_bytes(data[:2], "big"), data[2], data[3]
    if zero != 0 or code not in _DTYPES:
        raise DataError(f"{where} has a bad magic number 0x{data[:4].hex()} (expected 0x0000TTNN, TT a dtype code)")
    if ndim == 0:
        raise DataError(f"{where} declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{where} is truncated inside its header ({len(data)} of {header} bytes)")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = _DTYPES[code]
    count = math.prod(shape)
    expected = header + count * dtype.itemsize
    if len(data) != expected:
        fault = "truncated" if len(data) < expected else "longer than its header says"
        raise DataError(
            f"{where} is {fault}: header says shape {shape} of {dtype.name} ({expected} bytes), file has {len(data)}"
        )
    array = np.frombuffer(data, dtype=dtype, count=count, offset=header).astype(dtype.newbyteorder("="))
    return torch.from_numpy(array.reshape(shape))


def write_idx(path: str | os.PathLike[str], tensor: torch.Tensor | np.ndarray, *, compress: bool | None = None) -> None:
    """Write ``tensor`` as an IDX file; gzipped when ``compress`` is true (default: when the name ends in ``.gz``).

    Handy for building small test fixtures in the Fashion-MNIST layout.
    """
    array = tensor.detach().cpu().numpy() if isinstance(tensor, torch.Tensor) else np.asarray(tensor)
    native = array.dtype.newbyteorder("=")
    if native not in _CODES:
        raise DataError(f"IDX cannot store dtype {array.dtype}; use one of uint8, int8, int16, int32, float32, float64")
    if array.ndim == 0 or array.ndim > 255:
        raise DataError(f"IDX needs 1 to 255 dimensions, got {array.ndim}")
    code = _CODES[native]
    header = bytes([0, 0, code, array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    payload = header + np.ascontiguousarray(array, dtype=_DTYPES[code]).tobytes()
    path = Path(path)
    if compress if compress is not None else path.suffix == ".gz":
        payload = gzip.compress(payload, compresslevel=6)
    path.write_bytes(payload)
