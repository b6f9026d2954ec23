"""One storage layer for every artifact path: a local folder now, a shared filesystem or `s3://` later.

Paths are URIs (a plain local path is a URI too) resolved through fsspec; credentials and endpoints come from
the environment as the AWS tools read them, never from configs. Writes are atomic where the backend allows:
a local file is written under a temporary name and renamed; an object store publishes an object whole on put.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import shutil
import uuid
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from prvos_core.errors import StorageError

# fsspec caches folder listings per filesystem instance and sees only its own writes; stages write the same
# stores from other processes and nodes (a driver listing a Zarr store before the actors filled it would
# keep seeing it empty), so object store listings are never cached. Zarr's own s3fs instances read this too.
fsspec.config.conf.setdefault("s3", {}).setdefault("use_listings_cache", False)


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem and the backend path of `uri`."""
    try:
        fs, path = fsspec.core.url_to_fs(str(uri))
    except (ImportError, ValueError) as error:
        raise StorageError(f"{uri}: no storage backend for this URI ({error}); use a local path or s3://") from None
    return fs, path


def is_local(uri: str) -> bool:
    return isinstance(filesystem(uri)[0], LocalFileSystem)


def arrow_filesystem(uri: str):
    """(pyarrow filesystem, path) over the fsspec filesystem of a remote `uri`, for libraries that write
    through pyarrow (Ray Train's checkpoints): the same S3 client settings as everything else, and no empty
    "<folder>/" marker objects, which pyarrow's own S3 filesystem writes."""
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    fs, path = filesystem(uri)
    return PyFileSystem(FSSpecHandler(fs)), path


def join(base: str, *parts: str) -> str:
    """Join URI parts with '/' (keeps the scheme of `base`)."""
    base = str(base)
    if "://" in base:
        return posixpath.join(base, *parts)
    return os.path.join(base, *parts)


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.exists(path)


def makedirs(uri: str) -> None:
    fs, path = filesystem(uri)
    try:
        fs.makedirs(path, exist_ok=True)
    except PermissionError:
        raise StorageError(f"{uri}: permission denied creating the folder; choose a writable run.root") from None
    except OSError as error:
        raise StorageError(f"{uri}: cannot create the folder ({error}); check the path and free space") from None


def listdir(uri: str) -> list[str]:
    """Names (not paths) directly under `uri`; empty when it does not exist."""
    fs, path = filesystem(uri)
    if not fs.exists(path):
        return []
    # An object store may list the folder's own "<folder>/" marker object (tools such as pyarrow write them).
    own = path.rstrip("/")
    return sorted(
        posixpath.basename(entry.rstrip("/")) for entry in fs.ls(path, detail=False) if entry.rstrip("/") != own
    )


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    try:
        with fs.open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        raise StorageError(f"{uri}: not found") from None
    except PermissionError:
        raise StorageError(f"{uri}: permission denied; check read access") from None


def write_bytes(uri: str, data: bytes) -> None:
    """Write `data` to `uri` so a reader never sees a partial file."""
    fs, path = filesystem(uri)
    parent = posixpath.dirname(path) if not isinstance(fs, LocalFileSystem) else os.path.dirname(path)
    try:
        if isinstance(fs, LocalFileSystem):
            os.makedirs(parent, exist_ok=True)
            temporary = os.path.join(parent, f".{os.path.basename(path)}.{uuid.uuid4().hex}.partial")
            try:
                with open(temporary, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(temporary, path)
            finally:
                if os.path.exists(temporary):
                    os.unlink(temporary)
        else:
            with fs.open(path, "wb") as handle:
                handle.write(data)
    except PermissionError:
        raise StorageError(f"{uri}: permission denied writing; choose a writable location") from None
    except OSError as error:
        raise StorageError(f"{uri}: write failed ({error.strerror or error}); check free space and the path") from None


def read_json(uri: str) -> Any:
    data = read_bytes(uri)
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise StorageError(f"{uri}: not valid JSON; the artifact is damaged, re-run its stage") from None


def write_json(uri: str, payload: Any) -> None:
    write_bytes(uri, (json.dumps(payload, indent=1, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8"))


def write_parquet(uri: str, table: pa.Table) -> None:
    """Write a Parquet table atomically (serialised in memory, then one atomic write)."""
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    write_bytes(uri, buffer.getvalue())


def read_parquet(uri: str) -> pa.Table:
    fs, path = filesystem(uri)
    try:
        return pq.read_table(path, filesystem=fs)
    except FileNotFoundError:
        raise StorageError(f"{uri}: not found; run the stage that writes it first") from None
    except (pa.ArrowInvalid, OSError) as error:  # a damaged page surfaces as OSError ("Couldn't deserialize")
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise StorageError(f"{uri}: not a valid Parquet file ({reason}); re-run its stage") from None


def remove(uri: str) -> None:
    """Remove a file or a folder tree; missing is fine."""
    fs, path = filesystem(uri)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def upload_folder(local_dir: str, uri: str, *, last: str | None = None) -> None:
    """Copy the files of the local folder `local_dir` to the folder `uri`, replacing what is there.

    Local target: copied into a staging folder beside it, then renamed into place (all or nothing). Object
    store: one object per file, the file named `last` (the one readers check first) uploaded after the others.
    """
    fs, path = filesystem(uri)
    files = sorted(
        (
            os.path.relpath(os.path.join(folder, name), local_dir)
            for folder, _, names in os.walk(local_dir)
            for name in names
        ),
        key=lambda name: (name == last, name),
    )
    try:
        if isinstance(fs, LocalFileSystem):
            parent = os.path.dirname(os.path.abspath(path))
            os.makedirs(parent, exist_ok=True)
            staging = os.path.join(parent, f".{os.path.basename(path)}.{uuid.uuid4().hex}.partial")
            try:
                shutil.copytree(local_dir, staging)
                if os.path.exists(path):
                    shutil.rmtree(path)
                os.replace(staging, path)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            return
        if fs.exists(path):
            fs.rm(path, recursive=True)
        for name in files:
            fs.put_file(os.path.join(local_dir, name), posixpath.join(path, *name.split(os.sep)))
    except PermissionError:
        raise StorageError(f"{uri}: permission denied writing; choose a writable location") from None
    except OSError as error:
        raise StorageError(f"{uri}: upload failed ({error.strerror or error}); check the path and free space") from None
