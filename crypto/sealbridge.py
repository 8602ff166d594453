"""The one typed door to Microsoft SEAL (through `tenseal.sealapi`).

TenSEAL is untyped and its SEAL bindings move objects in and out only through
*file paths* (``obj.save(path)`` always writes ZSTD, ``obj.load(ctx, path)``).
Everything SEAL-specific lives here: the context, the NTT tables, SEAL's
samplers, public-key encryption, and the serialization layout used to turn
SEAL objects into numpy arrays and back. The rest of `crypto` sees only
``uint64`` arrays of shape ``(L, N)`` (one row per RNS prime) and `bytes`.

SEAL serialization (SEAL 4.x, little endian), verified against tenseal 0.3.18:

    SEALHeader (16 B): u16 magic 0xA15E | u8 header size 16 | u8 version major | u8 minor
                       | u8 compression (0 none, 1 zlib, 2 zstd) | u16 reserved 0 | u64 total size
    Ciphertext / PublicKey body: u64[4] parms_id | u8 is_ntt_form | u64 size | u64 N | u64 L
                       | f64 scale | u64 correction factor (1)
                       | nested SEALHeader (uncompressed) | u64 count | count x u64,
                       index = (poly * L + prime) * N + coefficient
    Plaintext / SecretKey body: u64[4] parms_id | u64 coeff count | f64 scale
                       | nested SEALHeader | u64 count | count x u64, index = prime * N + coefficient

The layout is SEAL's, not a public API: the tests round-trip it against SEAL
itself (SEAL's `Decryptor` must agree with the numpy decryption bit for bit),
and pyproject pins tenseal.
"""

from __future__ import annotations

import os
import struct
import sys
import tempfile
from collections.abc import Callable
from typing import Final, final

import numpy as np
import numpy.typing as npt
import tenseal.sealapi as seal
import zstandard

U64 = npt.NDArray[np.uint64]

_MAGIC: Final = 0xA15E
_HEADER: Final = struct.Struct("<HBBBBHQ")
_CIPHERTEXT_META: Final = struct.Struct("<4QBQQQdQ")
_PLAINTEXT_META: Final = struct.Struct("<4QQd")
_COUNT: Final = struct.Struct("<Q")
_TMPDIR: Final = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
_MAX_OBJECT: Final = 1 << 28

# tenseal's util submodule (NTT tables, samplers) is only reachable through sys.modules.
_util: Final = sys.modules["_sealapi_cpp.util"]


class SealLayoutError(RuntimeError):
    """SEAL produced or refused bytes in a layout this bridge does not expect (version drift)."""


def he_standard_max_bits(degree: int) -> int:
    """Largest total coefficient modulus (bits) the HE standard allows at 128-bit security."""
    return int(_util.seal_he_std_parms_128_tc(degree))


def _parms_id_bytes(parms_id: list[int]) -> bytes:
    return struct.pack("<4Q", *parms_id)


def _temp_path() -> str:
    fd, path = tempfile.mkstemp(dir=_TMPDIR, prefix="swarmnode-seal-", suffix=".bin")
    os.close(fd)
    return path


def _save_bytes(save: Callable[[str], None]) -> bytes:
    path = _temp_path()
    try:
        save(path)
        with open(path, "rb") as f:
            return f.read(_MAX_OBJECT)
    finally:
        os.unlink(path)


def _load_bytes(load: Callable[[str], None], data: bytes) -> None:
    path = _temp_path()
    try:
        with open(path, "wb") as f:
            f.write(data)
        load(path)
    except RuntimeError as exc:
        raise SealLayoutError(f"SEAL refused a crafted object: {exc}") from exc
    finally:
        os.unlink(path)


def _saved_body(obj: object) -> bytes:
    """The uncompressed serialization body of a SEAL object (after its 16-byte header)."""
    saved = _save_bytes(obj.save)  # type: ignore[attr-defined]  # a tenseal object
    magic, header_size, _, _, compression, _, total = _HEADER.unpack_from(saved, 0)
    if magic != _MAGIC or header_size != _HEADER.size or total != len(saved):
        raise SealLayoutError("unexpected SEAL object header")
    body = saved[_HEADER.size :]
    if compression == 2:
        return zstandard.ZstdDecompressor().decompress(body, max_output_size=_MAX_OBJECT)
    if compression != 0:
        raise SealLayoutError(f"unexpected SEAL compression mode {compression}")
    return body


@final
class SealContext:
    """A SEAL CKKS context with the numpy-facing operations `crypto` needs.

    Levels: the *key level* has every prime (the last one is SEAL's special
    prime, used only inside public-key encryption); the *data level* (SEAL's
    ``first_parms_id``) drops it and is where all ciphertexts live.
    """

    __slots__ = (
        "_context",
        "_data_tables",
        "_key_parms",
        "_key_tables",
        "_version",
        "data_moduli",
        "data_parms_id",
        "degree",
        "key_moduli",
        "key_parms_id",
    )

    def __init__(self, degree: int, coeff_bits: tuple[int, ...]) -> None:
        parms = seal.EncryptionParameters(seal.SCHEME_TYPE.CKKS)
        parms.set_poly_modulus_degree(degree)
        parms.set_coeff_modulus(seal.CoeffModulus.Create(degree, list(coeff_bits)))
        # TC128 makes SEAL itself refuse parameters outside the HE standard's 128-bit table.
        context = seal.SEALContext(parms, True, seal.SEC_LEVEL_TYPE.TC128)
        if not context.parameters_set():
            raise ValueError(
                f"SEAL rejects N={degree}, moduli {coeff_bits}: {context.parameters_error_message()}"
            )
        self._context = context
        self.degree: Final = degree
        self._key_parms = context.key_context_data().parms()
        key_moduli = list(self._key_parms.coeff_modulus())
        data_moduli = list(context.first_context_data().parms().coeff_modulus())
        self.key_moduli: Final = tuple(int(m.value()) for m in key_moduli)
        self.data_moduli: Final = tuple(int(m.value()) for m in data_moduli)
        self.key_parms_id: Final = _parms_id_bytes(list(context.key_parms_id()))
        self.data_parms_id: Final = _parms_id_bytes(list(context.first_parms_id()))
        log_n = degree.bit_length() - 1
        self._key_tables = [_util.NTTTables(log_n, m) for m in key_moduli]
        self._data_tables = self._key_tables[: len(data_moduli)]
        self._version = self._seal_version()

    def _seal_version(self) -> tuple[int, int]:
        saved = _save_bytes(seal.Plaintext().save)
        magic, size, major, minor, _, _, _ = _HEADER.unpack_from(saved, 0)
        if magic != _MAGIC or size != _HEADER.size:
            raise SealLayoutError("unexpected SEAL header layout")
        return int(major), int(minor)

    # -- NTT (SEAL's negacyclic NTT, bit-identical to what SEAL does internally) --

    def ntt(self, poly: U64) -> U64:
        """Forward NTT of an ``(L, N)`` coefficient-domain poly over the first L key-level primes."""
        return self._transform(poly, _util.ntt_negacyclic_harvey)

    def intt(self, poly: U64) -> U64:
        """Inverse NTT of an ``(L, N)`` NTT-domain poly over the first L key-level primes."""
        return self._transform(poly, _util.inverse_ntt_negacyclic_harvey)

    def _transform(self, poly: U64, function: Callable[[list[int], object], list[int]]) -> U64:
        if poly.ndim != 2 or poly.shape[0] > len(self._key_tables) or poly.shape[1] != self.degree:
            raise ValueError(f"expected (L, {self.degree}) residues, got {poly.shape}")
        out = np.empty(poly.shape, dtype=np.uint64)
        for j in range(poly.shape[0]):
            out[j] = np.fromiter(function(poly[j].tolist(), self._key_tables[j]), np.uint64, self.degree)
        # The bound inverse NTT leaves some outputs in [q, 2q) (lazy last step): reduce fully.
        q_col = np.array(self.key_moduli[: poly.shape[0]], dtype=np.uint64).reshape(-1, 1)
        result: U64 = np.where(out >= q_col, out - q_col, out)
        return result

    # -- SEAL's samplers, seeded by the caller (64 bytes -> Blake2xb) --

    def _key_level_sample(self, sampler: Callable[[object, object], list[int]], seed: bytes) -> U64:
        if len(seed) != 64:
            raise ValueError("a SEAL PRNG seed has 64 bytes")
        prng = seal.Blake2xbPRNG(list(struct.unpack("<8Q", seed)))
        flat = np.fromiter(sampler(prng, self._key_parms), np.uint64, len(self.key_moduli) * self.degree)
        return flat.reshape(len(self.key_moduli), self.degree)

    def sample_uniform(self, seed: bytes) -> U64:
        """Uniform residues mod every key-level prime, deterministic in `seed` (a CRS)."""
        return self._key_level_sample(_util.sample_poly_uniform, seed)

    def sample_ternary(self, seed: bytes) -> U64:
        """A uniform ternary poly (SEAL's secret-key distribution), coefficient domain, key level."""
        return self._key_level_sample(_util.sample_poly_ternary, seed)

    def sample_error(self, seed: bytes) -> U64:
        """SEAL's RLWE error (clipped normal, sigma 3.2), coefficient domain, key level."""
        return self._key_level_sample(_util.sample_poly_normal, seed)

    # -- objects in and out of SEAL --

    def _header(self, body_size: int) -> bytes:
        return _HEADER.pack(_MAGIC, _HEADER.size, *self._version, 0, 0, _HEADER.size + body_size)

    def _array_bytes(self, data: U64) -> bytes:
        raw = np.ascontiguousarray(data, dtype="<u8").tobytes()
        return self._header(_COUNT.size + len(raw)) + _COUNT.pack(data.size) + raw

    def _ciphertext_bytes(self, parms_id: bytes, data: U64, scale: float) -> bytes:
        size, primes, degree = data.shape
        meta = _CIPHERTEXT_META.pack(*struct.unpack("<4Q", parms_id), 1, size, degree, primes, scale, 1)
        body = meta + self._array_bytes(data)
        return self._header(len(body)) + body

    def decrypt_with_secret(self, secret_key: U64, ciphertext: U64, scale: float) -> U64:
        """SEAL's own `Decryptor` on our arrays: ``c0 + c1 * s`` (NTT form, data level).

        Only used to cross-check the numpy decryption path against SEAL (a layout self-test).
        """
        key_primes = len(self.key_moduli)
        if secret_key.shape != (key_primes, self.degree):
            raise ValueError("secret key must be key level")
        meta = _PLAINTEXT_META.pack(*struct.unpack("<4Q", self.key_parms_id), secret_key.size, 1.0)
        body = meta + self._array_bytes(secret_key)
        key = seal.SecretKey()
        _load_bytes(lambda path: key.load(self._context, path), self._header(len(body)) + body)
        encrypted = seal.Ciphertext()
        blob = self._ciphertext_bytes(self.data_parms_id, ciphertext, scale)
        _load_bytes(lambda path: encrypted.load(self._context, path), blob)
        plain = seal.Plaintext()
        seal.Decryptor(self._context, key).decrypt(encrypted, plain)
        body = _saved_body(plain)
        offset = _PLAINTEXT_META.size + _HEADER.size
        (count,) = _COUNT.unpack_from(body, offset)
        flat = np.frombuffer(body, dtype="<u8", count=count, offset=offset + _COUNT.size)
        return flat.astype(np.uint64).reshape(len(self.data_moduli), self.degree)
