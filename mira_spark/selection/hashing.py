"""Spark-identical 64-bit hashes in pure Python (no Spark import).

Takes strings; gives the signed 64-bit integers Spark SQL's ``xxhash64`` returns for them, so the driver,
the pure selection maths (:mod:`mira_spark.selection.thresholds`) and the tests can reproduce a hash that Spark
computed on the executors, and vice versa.

* :func:`xxh64` is the reference XXH64 algorithm (Yann Collet's xxHash, 64-bit variant) over bytes with a
  seed, unsigned result.
* :func:`spark_xxhash64` is Spark's ``xxhash64(c1, c2, ...)`` over **string** columns: each UTF-8 string
  is hashed with the previous column's hash as seed, starting from Spark's seed 42; the result is the
  signed 64-bit value Spark shows. Null columns are skipped (the seed passes through), as Spark does.
  Only strings are covered: Spark hashes ints, longs and doubles through other paths.

Verified against classic Spark 4.2.0 and Sail 0.7.2 on ASCII, non-ASCII, empty and long strings and on
two-column calls (the known values are pinned in ``tests/test_thresholds_math.py``).

>>> spark_xxhash64("doc-1") == spark_xxhash64("doc-1")
True
>>> xxh64(b"", 0) == 0xEF46DB3751D8E999   # the algorithm's published empty-input value
True
"""

from __future__ import annotations

SPARK_HASH_SEED = 42
"""Seed Spark SQL's ``xxhash64`` starts from."""

_MASK = (1 << 64) - 1
_P1 = 11400714785074694791
_P2 = 14029467366897019727
_P3 = 1609587929392839161
_P4 = 9650029242287828579
_P5 = 2870177450012600261


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (64 - r))) & _MASK


def _round(acc: int, lane: int) -> int:
    acc = (acc + lane * _P2) & _MASK
    return (_rotl(acc, 31) * _P1) & _MASK


def _merge(acc: int, val: int) -> int:
    acc ^= _round(0, val)
    return (acc * _P1 + _P4) & _MASK


def xxh64(data: bytes, seed: int = 0) -> int:
    """XXH64 of ``data`` with ``seed`` (taken modulo 2**64), as an unsigned 64-bit integer.

    >>> hex(xxh64(b"", 0))
    '0xef46db3751d8e999'
    """
    seed &= _MASK
    n = len(data)
    i = 0
    if n >= 32:
        v1 = (seed + _P1 + _P2) & _MASK
        v2 = (seed + _P2) & _MASK
        v3 = seed
        v4 = (seed - _P1) & _MASK
        limit = n - 32
        while i <= limit:
            v1 = _round(v1, int.from_bytes(data[i:i + 8], "little"))
            v2 = _round(v2, int.from_bytes(data[i + 8:i + 16], "little"))
            v3 = _round(v3, int.from_bytes(data[i + 16:i + 24], "little"))
            v4 = _round(v4, int.from_bytes(data[i + 24:i + 32], "little"))
            i += 32
        h = (_rotl(v1, 1) + _rotl(v2, 7) + _rotl(v3, 12) + _rotl(v4, 18)) & _MASK
        for v in (v1, v2, v3, v4):
            h = _merge(h, v)
    else:
        h = (seed + _P5) & _MASK
    h = (h + n) & _MASK
    while i + 8 <= n:
        h ^= _round(0, int.from_bytes(data[i:i + 8], "little"))
        h = (_rotl(h, 27) * _P1 + _P4) & _MASK
        i += 8
    if i + 4 <= n:
        h ^= (int.from_bytes(data[i:i + 4], "little") * _P1) & _MASK
        h = (_rotl(h, 23) * _P2 + _P3) & _MASK
        i += 4
    while i < n:
        h ^= (data[i] * _P5) & _MASK
        h = (_rotl(h, 11) * _P1) & _MASK
        i += 1
    h ^= h >> 33
    h = (h * _P2) & _MASK
    h ^= h >> 29
    h = (h * _P3) & _MASK
    h ^= h >> 32
    return h


def to_signed64(x: int) -> int:
    """An unsigned 64-bit value as the signed long Spark shows.

    >>> to_signed64(2**64 - 1)
    -1
    """
    x &= _MASK
    return x - (1 << 64) if x >= 1 << 63 else x


def spark_xxhash64(*values: str | None) -> int:
    """Spark SQL's ``xxhash64(values...)`` for string (or null) columns: a signed 64-bit integer.

    >>> spark_xxhash64("a", None) == spark_xxhash64("a")
    True
    """
    h = SPARK_HASH_SEED
    for value in values:
        if value is None:
            continue
        h = xxh64(value.encode("utf-8"), h)
    return to_signed64(h)
