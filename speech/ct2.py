"""A reader of CTranslate2's ``model.bin``, so that a converted model loads without ctranslate2.

The layout (binary version 6, written by ``ctranslate2.specs.model_spec.ModelSpec._serialize``;
every integer little-endian)::

    u32 binary_version            (6)
    str spec_name                 ("WhisperSpec", ...)
    u32 spec_revision
    u32 n_variables
    n_variables x:
        str name                  ("encoder/layer_0/self_attention/linear_0/weight", ...)
        u8  rank, rank x u32 dims (rank 0: a scalar setting such as "decoder/num_heads")
        u8  dtype id              (0 float32, 1 int8, 2 int16, 3 int32, 4 float16, 5 bfloat16)
        u32 n_bytes, n_bytes of data
    u32 n_aliases
    n_aliases x: str alias, str target name

where ``str`` is a u16 length (the NUL included), the UTF-8 bytes and a NUL. Nothing in it is
executable: it is read with :mod:`struct` and ``numpy.frombuffer``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from compress.errors import UserError

SUPPORTED_VERSIONS = (5, 6)
# CTranslate2's DataType enum (include/ctranslate2/types.h); bfloat16 is kept as raw uint16 bits
_DTYPES: dict[int, np.dtype] = {
    0: np.dtype("<f4"), 1: np.dtype("i1"), 2: np.dtype("<i2"), 3: np.dtype("<i4"),
    4: np.dtype("<f2"), 5: np.dtype("<u2"),
}
BFLOAT16 = 5


class CT2FormatError(UserError, ValueError):
    """A model.bin that is not a readable CTranslate2 model; the message names the file."""


@dataclass
class CT2Model:
    """The variables of a model.bin: ``arrays`` by name (aliases resolved), the spec's name
    and revision, and each variable's CTranslate2 dtype id."""

    spec: str
    revision: int
    arrays: dict[str, np.ndarray]
    dtype_ids: dict[str, int] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)

    def scalar(self, name: str) -> int | float:
        """A rank-0 setting such as ``encoder/num_heads``."""
        value = self.arrays[name]
        return value.item()

    def float_array(self, name: str) -> np.ndarray:
        """A weight as float32, bfloat16 widened exactly."""
        value = self.arrays[name]
        if self.dtype_ids.get(name) == BFLOAT16:
            return (value.astype(np.uint32) << 16).view(np.float32)
        if value.dtype.kind == "i":
            raise CT2FormatError(f"'{name}' is quantized ({value.dtype}); convert the model with float weights")
        return value.astype(np.float32)


class _Cursor:
    def __init__(self, data: memoryview, path: Path):
        self.data, self.pos, self.path = data, 0, path

    def take(self, n: int, what: str) -> memoryview:
        if self.pos + n > len(self.data):
            raise CT2FormatError(f"{self.path}: truncated at byte {self.pos} while reading {what} "
                                 f"({n} bytes wanted, {len(self.data) - self.pos} left)")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def u16(self, what: str) -> int:
        return struct.unpack("<H", self.take(2, what))[0]

    def u32(self, what: str) -> int:
        return struct.unpack("<I", self.take(4, what))[0]

    def string(self, what: str) -> str:
        n = self.u16(what)
        raw = bytes(self.take(n, what))
        if n == 0 or raw[-1] != 0:
            raise CT2FormatError(f"{self.path}: byte {self.pos - n}: {what} is not a NUL-terminated string")
        try:
            return raw[:-1].decode("utf-8")
        except UnicodeDecodeError:
            raise CT2FormatError(f"{self.path}: byte {self.pos - n}: {what} is not UTF-8") from None


def read_model_bin(path: str | Path) -> CT2Model:
    """Read a CTranslate2 ``model.bin`` into numpy arrays (float16 stays float16).

    Raises :class:`CT2FormatError` naming the file for a truncated or foreign file, an
    unknown version or data type, a size that disagrees with the shape, trailing bytes,
    or an alias to a missing variable."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise CT2FormatError(f"{path}: cannot read ({e.strerror or e})") from None
    return parse_model_bin(raw, path)


def parse_model_bin(raw: bytes, path: str | Path) -> CT2Model:
    """:func:`read_model_bin` of bytes already read (a model.bin joined from parts);
    ``path`` names them in errors. The arrays are views of ``raw``."""
    path = Path(path)
    cur = _Cursor(memoryview(raw), path)
    version = cur.u32("the binary version")
    if version not in SUPPORTED_VERSIONS:
        raise CT2FormatError(f"{path}: not a CTranslate2 model.bin this reader knows "
                             f"(binary version {version}; known: {', '.join(map(str, SUPPORTED_VERSIONS))})")
    spec = cur.string("the spec name")
    revision = cur.u32("the spec revision")
    n_vars = cur.u32("the variable count")
    arrays: dict[str, np.ndarray] = {}
    dtype_ids: dict[str, int] = {}
    for i in range(n_vars):
        name = cur.string(f"the name of variable {i}")
        rank = cur.u8(f"the rank of '{name}'")
        shape = tuple(cur.u32(f"the shape of '{name}'") for _ in range(rank))
        dtype_id = cur.u8(f"the dtype of '{name}'")
        if dtype_id not in _DTYPES:
            raise CT2FormatError(f"{path}: '{name}' has an unknown data type id {dtype_id}")
        n_bytes = cur.u32(f"the size of '{name}'")
        dtype = _DTYPES[dtype_id]
        if n_bytes != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
            raise CT2FormatError(f"{path}: '{name}' holds {n_bytes} bytes, but shape {shape} of {dtype} "
                                 f"needs {int(np.prod(shape, dtype=np.int64)) * dtype.itemsize}")
        data = cur.take(n_bytes, f"the data of '{name}'")
        arrays[name] = np.frombuffer(data, dtype=dtype).reshape(shape)
        dtype_ids[name] = dtype_id
    aliases: dict[str, str] = {}
    if cur.pos < len(raw):  # version 5 files may end after the variables
        for i in range(cur.u32("the alias count")):
            alias = cur.string(f"alias {i}")
            target = cur.string(f"the target of alias '{alias}'")
            if target not in arrays:
                raise CT2FormatError(f"{path}: alias '{alias}' names a missing variable '{target}'")
            aliases[alias] = target
            arrays[alias] = arrays[target]
            dtype_ids[alias] = dtype_ids[target]
    if cur.pos != len(raw):
        raise CT2FormatError(f"{path}: {len(raw) - cur.pos} unexpected bytes after the last entry")
    return CT2Model(spec, revision, arrays, dtype_ids, aliases)


def write_model_bin(path: str | Path, spec: str, revision: int, arrays: dict[str, np.ndarray],
                    aliases: dict[str, str] | None = None) -> None:
    """Write arrays in the layout :func:`read_model_bin` reads (for tests and round trips);
    float32, float16, int8/16/32 arrays, in the sorted order CTranslate2 writes."""
    codes = {np.dtype(v): k for k, v in _DTYPES.items() if k != BFLOAT16}

    def string(s: str) -> bytes:
        b = s.encode("utf-8") + b"\0"
        return struct.pack("<H", len(b)) + b

    out = [struct.pack("<I", 6), string(spec), struct.pack("<I", revision), struct.pack("<I", len(arrays))]
    for name in sorted(arrays):
        a = np.asarray(arrays[name], order="C")  # ascontiguousarray would make a scalar 1-d
        a = a.astype(a.dtype.newbyteorder("<"))
        out += [string(name), struct.pack("<B", a.ndim), *(struct.pack("<I", d) for d in a.shape),
                struct.pack("<B", codes[a.dtype]), struct.pack("<I", a.nbytes), a.tobytes()]
    aliases = aliases or {}
    out.append(struct.pack("<I", len(aliases)))
    for alias, target in sorted(aliases.items()):
        out += [string(alias), string(target)]
    Path(path).write_bytes(b"".join(out))
