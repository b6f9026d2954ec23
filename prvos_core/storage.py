"""One storage layer for every artifact path: a local folder now, a shared filesystem or `s3://` later.

Paths are URIs (a plain local path is a URI too) resolved through fsspec; credentials and endpoints come from
the environment as the AWS tools read them, never from configs. Writes are atomic where the backend allows:
a local file is written under a temporary name and renamed; an object store publishes an object whole on put.
Datasets are read through the same layer: `dataset_path` gives the pathlib-style path the dataset layout joins.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import posixpath
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from botocore.exceptions import EndpointConnectionError, NoCredentialsError, PartialCredentialsError
from fsspec.implementations.local import LocalFileSystem
from upath import UPath

from prvos_core.errors import StorageError, first_line

_log = logging.getLogger("prvos")

# Ids become folder and file names in run stores and object stores: keep them to a portable alphabet.
_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def id_problem(value: object) -> str | None:
    """Return why `value` is not a safe id (None when it is safe).

    A safe id is a non-empty string of letters, digits, '.', '_' and '-', at most 128 characters, not starting
    with '.', '_' or '-' (so no hidden files, no `..`, no path separators).
    """
    if not isinstance(value, str):
        return f"id must be a string, got {type(value).__name__}"
    if value == "":
        return "id is empty"
    if "/" in value or "\\" in value:
        return f"id {value!r} contains a path separator"
    if ".." in value:
        return f"id {value!r} contains '..'"
    if not _ID_PATTERN.match(value):
        return f"id {value!r} has characters outside [A-Za-z0-9._-] or is longer than 128"
    return None


def is_safe_id(value: object) -> bool:
    return id_problem(value) is None


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


def dataset_path(uri: str | os.PathLike) -> Path | UPath:
    """A dataset file or folder as a path: `pathlib.Path` for a local path, a `UPath` (pathlib's API over fsspec)
    for a URI such as s3://bucket/dataset, so the layout's `/`, `is_file()` and `read_bytes()` read an object store
    as they read a folder. Opens nothing."""
    if isinstance(uri, (Path, UPath)):
        return uri
    return UPath(str(uri)) if "://" in str(uri) else Path(uri)


_CREDENTIALS_FIX = (
    "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE (a profile in ~/.aws/credentials), or give "
    "the machine an IAM role, on the driver and on every Ray node (and AWS_ENDPOINT_URL for an S3-compatible "
    "server other than AWS)"
)


def _bucket(uri: str) -> str:
    scheme, _, rest = str(uri).partition("://")
    return f"{scheme}://{rest.split('/', 1)[0]}"


@contextmanager
def remote_access(uri: str) -> Iterator[None]:
    """Turns botocore's "no credentials" and "cannot connect" errors, which fsspec passes on untranslated, into a
    StorageError naming the bucket and the fix."""
    try:
        yield
    except (NoCredentialsError, PartialCredentialsError):
        raise StorageError(f"{_bucket(uri)}: no AWS credentials found; {_CREDENTIALS_FIX}") from None
    except EndpointConnectionError as error:
        raise StorageError(
            f"{_bucket(uri)}: cannot connect to {error.kwargs.get('endpoint_url')}; check AWS_ENDPOINT_URL and the network"
        ) from None


def require_access(uri: str) -> None:
    """StorageError naming the bucket and the fix when the object store behind `uri` refuses the credentials at
    hand or finds none; nothing for a local path or a reachable URI, whether `uri` exists or not."""
    if is_local(uri):
        return
    fs, path = filesystem(uri)
    try:
        with remote_access(uri):
            fs.exists(path)
    except PermissionError:
        raise StorageError(f"{_bucket(uri)}: access denied to the credentials in use; {_CREDENTIALS_FIX}") from None


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
    with remote_access(uri):
        return fs.exists(path)


def makedirs(uri: str) -> None:
    fs, path = filesystem(uri)
    try:
        with remote_access(uri):
            fs.makedirs(path, exist_ok=True)
    except PermissionError:
        raise StorageError(f"{uri}: permission denied creating the folder; choose a writable run.root") from None
    except OSError as error:
        raise StorageError(f"{uri}: cannot create the folder ({error}); check the path and free space") from None


def listdir(uri: str) -> list[str]:
    """Names (not paths) directly under `uri`; empty when it does not exist."""
    fs, path = filesystem(uri)
    with remote_access(uri):
        if not fs.exists(path):
            return []
        entries = fs.ls(path, detail=False)
    # An object store may list the folder's own "<folder>/" marker object (tools such as pyarrow write them).
    own = path.rstrip("/")
    return sorted(posixpath.basename(entry.rstrip("/")) for entry in entries if entry.rstrip("/") != own)


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    try:
        with remote_access(uri), fs.open(path, "rb") as handle:
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
            with remote_access(uri), fs.open(path, "wb") as handle:
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
        with remote_access(uri):
            return pq.read_table(path, filesystem=fs)
    except FileNotFoundError:
        raise StorageError(f"{uri}: not found; run the stage that writes it first") from None
    except (pa.ArrowInvalid, OSError) as error:  # a damaged page surfaces as OSError ("Couldn't deserialize")
        reason = first_line(error)
        raise StorageError(f"{uri}: not a valid Parquet file ({reason}); re-run its stage") from None


def remove(uri: str) -> None:
    """Remove a file or a folder tree; missing is fine."""
    fs, path = filesystem(uri)
    with remote_access(uri):
        if fs.exists(path):
            fs.rm(path, recursive=True)


def listing_digest(uri: str) -> str:
    """Hash of the listing (key, size, ETag) of every object under the folder `uri`, or under the folder of the
    file `uri`: an object store dataset's fingerprint, from listings alone (one request per 1,000 objects)."""
    fs, path = filesystem(uri)
    with remote_access(uri):
        folder = posixpath.dirname(path) if fs.isfile(path) else path
        found = fs.find(folder, detail=True)
    digest = hashlib.sha256()
    for name in sorted(found):
        info = found[name]
        digest.update(f"{posixpath.relpath(name, folder)}:{info.get('size')}:{info.get('ETag')}\n".encode())
    return digest.hexdigest()[:20]


def disk_bytes(uri: str) -> int:
    """Bytes on disk of everything under `uri`."""
    fs, path = filesystem(uri)
    return int(sum(fs.du(path, total=False).values()))


def store_for_inputs(uri: str, digest: str, open_group: Callable[[str], Any], what: str) -> Any:
    """The resumable store (a Zarr group) at `uri` for inputs with `digest` (kept in its `inputs` attribute):
    resumed when it was written for them, else removed and started afresh, never mixed in. `what` names the
    store's content for the warning, e.g. "infer: ... holds labels"."""
    store = open_group(uri)
    if store.attrs.get("inputs") == digest:
        return store
    if any(True for _ in store.group_keys()):
        _log.warning("%s of other inputs at %s; starting afresh", what, uri)
        remove(uri)
        store = open_group(uri)
    store.attrs["inputs"] = digest
    return store


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
            with staged_folder(path) as staging:
                shutil.copytree(local_dir, staging, dirs_exist_ok=True)
            return
        if fs.exists(path):
            fs.rm(path, recursive=True)
        for name in files:
            fs.put_file(os.path.join(local_dir, name), posixpath.join(path, *name.split(os.sep)))
    except PermissionError:
        raise StorageError(f"{uri}: permission denied writing; choose a writable location") from None
    except OSError as error:
        raise StorageError(f"{uri}: upload failed ({error.strerror or error}); check the path and free space") from None


@contextmanager
def staged_folder(target: str | Path) -> Iterator[Path]:
    """A private folder beside the local folder `target`, for writing a folder whole or not at all.

    When the block ends without an error the staging folder replaces `target` (an older folder there is renamed
    aside, then removed); otherwise it is deleted. A reader never sees half a folder at `target`.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".staging", dir=target.parent))
    try:
        yield staging
        # mkdtemp makes the folder private (0700); the published one gets the usual permissions.
        staging.chmod(0o777 & ~_umask())
        if target.exists():
            retired = staging.with_suffix(".retired")
            os.rename(target, retired)
            os.rename(staging, target)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.rename(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def check_replaceable(target: Path, marker: str, command: str) -> None:
    """`target` may be absent, an empty folder or an earlier output of `command` (holding `marker`); else
    StorageError, so a mistyped --out never deletes someone's data."""
    if target.exists() and (not target.is_dir() or (any(target.iterdir()) and not (target / marker).is_file())):
        raise StorageError(f"{target} exists and is not an earlier `{command}` output; choose another --out")


@contextmanager
def output_folder(target: Path, marker: str, command: str) -> Iterator[Path]:
    """A folder of results for people (`prvos predict`, `prvos inspect`): `staged_folder` after
    `check_replaceable`; the command must write `marker`, the file that identifies its outputs."""
    check_replaceable(target, marker, command)
    try:
        with staged_folder(target) as staging:
            yield staging
            if not (staging / marker).is_file():
                raise AssertionError(f"{command} wrote no {marker}; the output would not be recognised as its own")
    except OSError as error:
        raise StorageError(f"cannot write into {target.parent} ({error.strerror}); choose another --out") from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
