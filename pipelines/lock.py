"""One writer per run folder: a lock naming the driver that holds it.

Local run folder: a lock file naming the process. A second `prvos run`/`resume` on the same run folder is refused
while the holder is alive. A lock left by a process that died (same host, pid gone or reused by another process)
is taken over: the stale file is renamed away first, so of two processes finding it stale only one takes it.

Run folder on S3 (s3://): a lease object `<run>/.lock` naming its owner (host, pid, run) and its length, renewed
by a thread of the driver every third of the lease. It is written only with S3's conditional puts: `If-None-Match:
*` creates it only where there is none, `If-Match: <ETag>` renews it or takes it over only if it is still the
version this driver read, so of two drivers racing for it exactly one wins. A lease is live until its length has
passed since its last renewal, measured on the store's clock (the response's Date minus the object's
Last-Modified), so the drivers' clocks do not matter; a live lease of another driver refuses this one, an expired
one (its driver died or lost the store) is taken over, and so is one whose process is gone from this host.
Every renewal writes a new token, so no two versions share an ETag.

Fallback: an S3-compatible server that ignores the conditional headers still refuses a second driver while the
first one's lease is live, because a driver reads the lease before it writes one; two drivers starting within the
same moment could then both take it. Other object stores (gs://, az://, ...) get no lock: a warning says so.
"""

from __future__ import annotations

import datetime as dt
import errno
import json
import logging
import os
import posixpath
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path

from fsspec.asyn import sync

from prvos_core import storage
from prvos_core.errors import StorageError, UserError

LOCK_FILE = ".lock"
LEASE_SECONDS = 60.0  # a driver that stops renewing (killed on another host, cut off) frees the run after this

log = logging.getLogger("prvos")


def _process_start(pid: int) -> str | None:
    """The kernel's start time of `pid` (tells a reused pid apart), None if there is no such process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return "unknown"
        return "unknown"


def _alive(holder: dict) -> bool:
    started = _process_start(int(holder.get("pid", -1)))
    return started is not None and (started == "unknown" or started == holder.get("process_start"))


class RunLock:
    """The lock of `run_dir`: a lock file in a local folder, a lease object on S3 (see the module docstring)."""

    def __init__(self, run_dir: str, lease_seconds: float = LEASE_SECONDS) -> None:
        self.run_dir = run_dir
        self.path = Path(run_dir) / LOCK_FILE  # the lock file of a local run folder
        self.lease_seconds = lease_seconds
        self.held = False
        self._lease: ObjectLease | None = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        if not storage.is_local(self.run_dir):
            if not _on_s3(self.run_dir):
                log.warning("%s: no run lock on this object store (only s3:// has one); run one driver per run",
                            self.run_dir)  # fmt: skip
                return
            self._lease = ObjectLease(self.run_dir, self.lease_seconds)
            self._lease.acquire()
            self.held = True
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StorageError(
                f"{self.run_dir}: cannot create the run folder ({error.strerror or error}); "
                "choose a writable run.root with free space"
            ) from None
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "process_start": _process_start(os.getpid()),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        for _ in range(3):
            try:
                descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_if_stale()
                continue
            except OSError as error:
                raise StorageError(
                    f"{self.path}: cannot create the run lock ({error.strerror or error}); "
                    "choose a writable run.root with free space"
                ) from None
            try:
                with os.fdopen(descriptor, "w") as handle:
                    json.dump(me, handle)
            except OSError as error:
                self.path.unlink(missing_ok=True)
                raise StorageError(
                    f"{self.path}: cannot write the run lock ({error.strerror or error}); free some space"
                ) from None
            self.held = True
            return
        raise UserError(f"{self.run_dir}: could not take the run lock {self.path}; try again")

    def _take_over_if_stale(self) -> None:
        try:
            holder = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError):
            holder = {}
        if holder.get("host") not in (None, socket.gethostname()):
            raise UserError(
                f"{self.run_dir} is locked by pid {holder.get('pid')} on {holder['host']} since {holder.get('since')}; "
                f"if that process is gone, delete {self.path}"
            )
        if holder and _alive(holder):
            raise UserError(
                f"{self.run_dir} is in use by pid {holder['pid']} (since {holder.get('since')}); "
                "wait for it to finish or stop it, then resume"
            )
        try:
            os.rename(self.path, self.path.with_name(f"{LOCK_FILE}.stale-{holder.get('pid', 'unknown')}-{os.getpid()}"))
        except FileNotFoundError:
            pass  # another process took it over first; the next attempt sees its lock

    def release(self) -> None:
        if self._lease is not None:
            self._lease.release()
            self._lease = None
            self.held = False
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


def lock_holder(run_dir: str) -> dict | None:
    """The live holder of a run's lock (its lease's owner on S3), or None."""
    if not storage.is_local(run_dir):
        lease = read_lease(run_dir) if _on_s3(run_dir) else None
        return lease.holder if lease is not None and lease.live() else None
    path = Path(run_dir) / LOCK_FILE
    try:
        holder = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return holder if holder.get("host") == socket.gethostname() and _alive(holder) else None


def _on_s3(uri: str) -> bool:
    protocol = storage.filesystem(uri)[0].protocol
    return "s3" in (protocol if isinstance(protocol, tuple) else (protocol,))


@dataclass(frozen=True)
class Lease:
    """A lease object as read: its owner's record, the version read, and seconds since its last renewal."""

    holder: dict
    etag: str
    age: float  # on the store's clock

    def live(self) -> bool:
        if self.holder.get("host") == socket.gethostname() and not _alive(self.holder):
            return False  # its driver died on this host: no need to wait for the lease to run out
        return self.age < float(self.holder.get("lease_seconds", LEASE_SECONDS))

    def in_use(self, run_dir: str) -> str:
        holder = self.holder
        return (
            f"{run_dir} is in use by pid {holder.get('pid')} on {holder.get('host')} (run {holder.get('run')}, since "
            f"{holder.get('since')}; lease renewed {self.age:.0f} s ago, lapses after "
            f"{holder.get('lease_seconds', LEASE_SECONDS):.0f} s without renewal); wait for it to finish, or stop "
            "that driver and resume once its lease has lapsed"
        )


def read_lease(run_dir: str) -> Lease | None:
    """The lease object of a run on S3, or None when there is none."""
    uri = storage.join(run_dir, LOCK_FILE)
    fs, path = storage.filesystem(uri)
    bucket, key = path.split("/", 1)
    try:
        with storage.remote_access(uri):
            body, etag, modified, server_date = sync(fs.loop, _get_object, fs, bucket, key)
    except FileNotFoundError:
        return None
    except OSError as error:
        raise StorageError(f"{uri}: cannot read the run lock ({error}); check read access to the run root") from None
    try:
        holder = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        holder = {}  # damaged: treated as a lease of unknown owner, taken over once it lapses
    now = parsedate_to_datetime(server_date) if server_date else dt.datetime.now(dt.timezone.utc)
    return Lease(holder if isinstance(holder, dict) else {}, etag, (now - modified).total_seconds())


async def _get_object(fs, bucket: str, key: str) -> tuple[bytes, str, dt.datetime, str | None]:
    """One GET: the body, its ETag and Last-Modified, and the server's Date (all of the same version)."""
    response = await fs._call_s3("get_object", Bucket=bucket, Key=key)
    try:
        body = await response["Body"].read()
    finally:
        response["Body"].close()
    date = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    return body, response["ETag"], response["LastModified"], date


class ObjectLease:
    """This driver's lease on a run folder on S3: taken, renewed in the background, released."""

    def __init__(self, run_dir: str, lease_seconds: float = LEASE_SECONDS) -> None:
        self.run_dir = run_dir
        self.uri = storage.join(run_dir, LOCK_FILE)
        self.lease_seconds = lease_seconds
        self._fs, path = storage.filesystem(self.uri)
        self._bucket, self._key = path.split("/", 1)
        self._owner = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "process_start": _process_start(os.getpid()),
            "run": posixpath.basename(run_dir.rstrip("/")),
            "since": _utc(time.time()),
            "lease_seconds": lease_seconds,
        }
        self._etag: str | None = None
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def acquire(self) -> None:
        for _ in range(3):
            current = read_lease(self.run_dir)
            if current is not None and current.live():
                raise UserError(current.in_use(self.run_dir))
            condition = {"IfNoneMatch": "*"} if current is None else {"IfMatch": current.etag}
            if self._put(condition):
                if current is not None:
                    log.warning("%s: took over the run lock of pid %s on %s (renewed %.0f s before)", self.run_dir,
                                current.holder.get("pid"), current.holder.get("host"), current.age)  # fmt: skip
                self._renewer = threading.Thread(target=self._renew, name="prvos-run-lease", daemon=True)
                self._renewer.start()
                return
        raise UserError(
            f"{self.run_dir}: could not take the run lock {self.uri}; another driver raced for it, try again"
        )

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
        if self._etag is None:
            return
        try:
            with storage.remote_access(self.uri):
                self._fs.call_s3("delete_object", Bucket=self._bucket, Key=self._key, IfMatch=self._etag)
        except OSError as error:
            if not _lost_race(error):
                log.warning("%s: could not remove the run lock (%s); it lapses by itself", self.uri, error)
        self._etag = None

    def _put(self, condition: dict) -> bool:
        """Write a fresh version of the lease if `condition` holds; False when another driver's write won."""
        now = time.time()
        record = {**self._owner, "renewed": _utc(now), "expires": _utc(now + self.lease_seconds),
                  "token": uuid.uuid4().hex}  # fmt: skip
        try:
            with storage.remote_access(self.uri):
                response = self._fs.call_s3(
                    "put_object", Bucket=self._bucket, Key=self._key, Body=json.dumps(record).encode(), **condition
                )
        except OSError as error:
            if _lost_race(error):
                return False
            raise StorageError(
                f"{self.uri}: cannot write the run lock ({error}); check write access to the run root"
            ) from None
        self._etag = response["ETag"]
        return True

    def _renew(self) -> None:
        while not self._stop.wait(self.lease_seconds / 3):
            try:
                renewed = self._put({"IfMatch": self._etag})
            except StorageError as error:  # a network blip: the next renewal tries again within the lease
                log.warning("%s: could not renew the run lock (%s)", self.uri, error)
                continue
            if not renewed:
                log.error("%s: another driver took over this run's lock (this one could not renew it for %.0f s); "
                          "stop this driver", self.uri, self.lease_seconds)  # fmt: skip
                self._etag = None
                return


def _lost_race(error: OSError) -> bool:
    """s3fs's translation of 412 Precondition Failed (FileExistsError for If-None-Match, EINVAL for If-Match),
    409 ConditionalRequestConflict (EBUSY) and of a lease deleted meanwhile (FileNotFoundError)."""
    return isinstance(error, (FileExistsError, FileNotFoundError)) or error.errno in (errno.EINVAL, errno.EBUSY)


def _utc(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
