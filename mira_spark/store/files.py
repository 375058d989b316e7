"""Small files under the table root, on any filesystem the executors reach (local, DBFS/Volumes, S3/ABFS/GCS).

Takes a URI or a local path; gives a ``pyarrow.fs`` filesystem and the few operations the request journal
(:mod:`mira_spark.store.journal`) and the lease (:mod:`mira_spark.store.lease`) need. Imports no Spark.

What each filesystem guarantees, and what this module relies on:

* **Local / POSIX (incl. NFS, DBFS and Volumes FUSE mounts seen as local paths)**: ``rename`` within a
  directory is atomic, so :func:`write_complete` writes a hidden temporary file and renames it: a reader
  never sees a partial file. :func:`create_exclusive` uses ``link(2)``, which fails when the target exists
  (an atomic create-if-absent that also never exposes partial content). NFSv3+ implements ``link``
  atomically on the server; FUSE mounts of object stores (``/dbfs``, ``/Volumes``) do not promise it, so
  for those give the cloud URI instead (then the object-store rules below apply).
* **Object stores (S3, GCS, ABFS through pyarrow)**: an object becomes visible only when its upload
  completes, so :func:`write_complete` writes the final name directly (a partial object is never listed).
  pyarrow exposes no conditional write (no ``If-None-Match``; apache/arrow#44281), so
  :func:`create_exclusive` elects a winner by *claim then list*: write a uniquely named claim, list the
  claims twice in a row, win only when yours is the only live one in either listing (otherwise withdraw
  and report a loss). This is safe (never two winners) on stores whose listing is strongly consistent
  after a write — AWS S3 (since December 2020), GCS and ADLS Gen2 are — even when a listing is not a
  snapshot (it need only return every entry that exists for its whole duration); it is not live-lock free
  (two simultaneous claimants both withdraw and retry), which callers absorb by polling. A claimant that
  dies between its claim and its withdrawal blocks others only until its claim is ``stale_after_s`` old.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import uuid
from collections.abc import Callable

import pyarrow.fs as pafs

log = logging.getLogger(__name__)

TMP_PREFIX = "."  # readers skip names starting with this: unfinished local writes
CLAIM_MARK = ".claim-"


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """``(filesystem, path)`` for a URI (``s3://``, ``gs://``, ``abfss://``, ``file://``) or a local path."""
    if "://" not in uri:
        return pafs.LocalFileSystem(), os.path.abspath(uri)
    return pafs.FileSystem.from_uri(uri)


def is_local(fs: pafs.FileSystem) -> bool:
    return isinstance(fs, pafs.LocalFileSystem)


def list_names(fs: pafs.FileSystem, directory: str) -> list[str]:
    """Base names of the files directly in ``directory`` (empty when it does not exist), sorted."""
    infos = fs.get_file_info(pafs.FileSelector(directory, allow_not_found=True))
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.File)


def list_dirs(fs: pafs.FileSystem, directory: str) -> list[str]:
    """Base names of the directories directly in ``directory`` (empty when it does not exist), sorted."""
    infos = fs.get_file_info(pafs.FileSelector(directory, allow_not_found=True))
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)


def read_bytes(fs: pafs.FileSystem, path: str) -> bytes | None:
    """The content of ``path``, or None when it does not exist."""
    try:
        with fs.open_input_stream(path) as stream:
            return stream.read()
    except FileNotFoundError:
        return None


def delete(fs: pafs.FileSystem, path: str) -> None:
    """Remove a file if present."""
    with contextlib.suppress(FileNotFoundError):
        fs.delete_file(path)


def delete_tree(fs: pafs.FileSystem, path: str) -> None:
    """Remove a directory and what it holds, if present."""
    with contextlib.suppress(FileNotFoundError):
        fs.delete_dir(path)


def write_complete(fs: pafs.FileSystem, path: str, write: Callable[[pafs.FileSystem, str], None]) -> None:
    """Call ``write(fs, target)`` so that ``path`` appears only complete (see the module docstring)."""
    parent = path.rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
    if not is_local(fs):
        write(fs, path)
        return
    tmp = f"{parent}/{TMP_PREFIX}{path.rsplit('/', 1)[1]}.{uuid.uuid4().hex}"
    write(fs, tmp)
    os.replace(tmp, path)


def write_bytes(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """Write (or replace) ``path`` with ``data``, never visible half-written."""

    def put(fs_: pafs.FileSystem, target: str) -> None:
        with fs_.open_output_stream(target) as out:
            out.write(data)

    write_complete(fs, path, put)


def create_exclusive(fs: pafs.FileSystem, path: str, data: bytes, *, stale_after_s: float,
                     clock: Callable[[], float] = time.time) -> bool:
    """Create ``path`` with ``data`` unless it exists; True when this call created it.

    Local: ``link(2)`` of a complete temporary file (atomic, no replace). Elsewhere: claim then list (see
    the module docstring); claims older than ``stale_after_s`` (by the time written in them) are ignored.
    """
    parent, name = path.rsplit("/", 1)
    fs.create_dir(parent, recursive=True)
    if is_local(fs):
        tmp = f"{parent}/{TMP_PREFIX}{name}.{uuid.uuid4().hex}"
        with open(tmp, "wb") as fh:
            fh.write(data)
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
    return _claim_then_list(fs, parent, name, data, stale_after_s, clock)


def _claim_then_list(fs: pafs.FileSystem, parent: str, name: str, data: bytes, stale_after_s: float,
                     clock: Callable[[], float]) -> bool:
    if name in list_names(fs, parent):
        return False
    mine = f"{name}{CLAIM_MARK}{uuid.uuid4().hex}"
    write_bytes(fs, f"{parent}/{mine}", json.dumps({"at": clock()}).encode())
    try:
        # Two listings, one after the other, and their union: a listing is not a snapshot (readdir, paginated
        # LISTs), so one listing can miss both a rival's file, created after it passed that name, and the
        # rival's claim, removed before it reached that one. Of an entry that exists throughout a listing,
        # every listing promises to return it; a rival whose claim predates ours either still holds it through
        # our first listing, or removed it — after creating its file — before our second began. See
        # test_claim_then_list_survives_a_listing_that_is_not_a_snapshot.
        names = set(list_names(fs, parent)) | set(list_names(fs, parent))
        if name in names:
            return False
        rivals = [n for n in names if n.startswith(name + CLAIM_MARK) and n != mine
                  and not _stale_claim(fs, f"{parent}/{n}", stale_after_s, clock)]
        if rivals:
            log.info("create %s/%s: %d concurrent claimants, withdrawing", parent, name, len(rivals))
            return False
        write_bytes(fs, f"{parent}/{name}", data)
        return True
    finally:
        delete(fs, f"{parent}/{mine}")


def _stale_claim(fs: pafs.FileSystem, path: str, stale_after_s: float, clock: Callable[[], float]) -> bool:
    raw = read_bytes(fs, path)
    if raw is None:
        # Gone since the listing: its claimant finished — it either withdrew or created the file after our
        # listing. Only a claim that is still there and old is a dead claimant's; withdrawing here is safe.
        return False
    try:
        return clock() - float(json.loads(raw)["at"]) > stale_after_s
    except (ValueError, KeyError, TypeError):
        return False
