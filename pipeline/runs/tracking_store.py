"""The MLflow tracking store: which one, opening it, and what to say when that fails.

The tracking URI is `sqlite:///mlflow.db` in the working directory unless MLFLOW_TRACKING_URI
is set (on a cluster: an `mlflow server` on PostgreSQL, profiles/README.md). A new SQLite store is
built under a temporary name and renamed into place once MLflow has created its whole schema, so
that a process killed while creating it (`python -m pipeline.runs.tracking init`, the Snakefile's
onstart) leaves no half-built store. Processes take turns opening a SQLite store (a file lock), so
that they never race to migrate it, and writes retry with backoff while SQLite is busy. A SQLite
file on a network file system is refused when the jobs run on other hosts (a cluster), and warned
about on one machine. An HTTP server that does not answer is reported within seconds, or waited
for (`waiting`: a training job waits SSL_REPRO_TRACKING_WAIT seconds for a server that restarts).
Every failure to open a store is one paragraph that says which of these it is: unreachable,
locked, full, half-built, or refused (with MLflow's whole message).
"""
from __future__ import annotations

import contextlib
import os
import random
import re
import sqlite3
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from ..errors import UserError
from ..files import remove_stale_temporaries

DEFAULT_URI = "sqlite:///mlflow.db"
T = TypeVar("T")
SQLITE_SIDE_FILES = ("", "-journal", "-wal", "-shm")   # a database and SQLite's files beside it
HTTP = ("http://", "https://")
DEFAULT_WAIT = 300.0   # seconds a training job waits for a store that does not answer
WAIT_POLL = 2.0        # seconds between two tries while waiting
MOUNTINFO = Path("/proc/self/mountinfo")
# File systems shared over a network, by the names the kernel's mount table gives them. SQLite's
# locks rely on POSIX file locks, which these provide unreliably or not at all across hosts (NFS's
# lock manager, Lustre without `-o flock`, a `nolock` mount that keeps locks on one client), and
# their caches let a host read pages another host has changed: writers on several hosts corrupt
# the database or stall on 'database is locked'.
NETWORK_FILE_SYSTEMS = frozenset({
    "nfs", "nfs4", "lustre", "gpfs", "beegfs", "ceph", "fuse.ceph-fuse", "glusterfs",
    "fuse.glusterfs", "cifs", "smb3", "smbfs", "afs", "panfs", "wekafs", "fuse.sshfs"})


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_URI)


def tracking_wait() -> float:
    """SSL_REPRO_TRACKING_WAIT: how long a training job waits for a store that does not answer."""
    return float(os.environ.get("SSL_REPRO_TRACKING_WAIT", DEFAULT_WAIT))


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI (relative to the working directory unless
    absolute); None for any other store."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri.removeprefix("sqlite:///").split("?")[0]
    return Path(path) if path and path != ":memory:" else None


def store_identity(uri: str) -> str:
    """The URI with a SQLite file made absolute: the same store whatever the working directory."""
    path = sqlite_path(uri)
    return f"sqlite:///{path.resolve()}" if path is not None else uri


def transient(error: BaseException) -> bool:
    text = str(error)
    return "locked" in text or "busy" in text.lower()


def retry(action: Callable[[], T], what: str, attempts: int = 8) -> T:
    """Run `action`, retrying on transient store errors (SQLite 'database is locked'; about 30 s
    in all)."""
    for attempt in range(attempts):
        try:
            return action()
        except Exception as error:  # filtered below, re-raised when not transient
            if not transient(error) or attempt == attempts - 1:
                raise
            time.sleep(min(0.1 * 2 ** attempt, 3.0) * (0.5 + random.random()))
    raise AssertionError("unreachable")


class ServerUnreachable(UserError):
    """An HTTP tracking server did not answer at all."""


def check_server_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail within seconds when an HTTP tracking server does not answer: MLflow's own client
    retries a refused connection for minutes before giving up."""
    if not uri.startswith(HTTP):
        return
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout).close()
    except urllib.error.HTTPError:
        return   # it answered (e.g. 401 behind authentication): reachable
    except (OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        raise ServerUnreachable(
            f"cannot reach the MLflow tracking server {uri!r} (MLFLOW_TRACKING_URI): {reason}. "
            f"Start the server or fix MLFLOW_TRACKING_URI; unset it to use the default "
            f"{DEFAULT_URI} in the working directory") from error


@contextmanager
def sqlite_schema_lock(path: Path | None):
    """One process at a time opens a SQLite store: the first one creates the schema, and MLflow's
    migrations fail ('table ... already exists') when several processes run them at once."""
    if path is None or sys.platform == "win32":
        yield
        return
    import fcntl

    lock = path.with_name(path.name + "-schema.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)   # released when the file closes
        yield


def create_sqlite_store(path: Path) -> None:
    """Build a new store's schema in `.<name>.<pid>-<n>.tmp` beside `path`, then rename it to
    `path`: killed at any moment, this leaves either no store or a whole one (and a temporary file
    that the next call removes). The name is new each time: MLflow keeps each URI's store open for
    the life of the process."""
    from mlflow.tracking import MlflowClient

    for suffix in SQLITE_SIDE_FILES:   # what a killed attempt left
        remove_stale_temporaries(path.parent, f".{path.name}.", f".tmp{suffix}")
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        MlflowClient(f"sqlite:///{tmp}").search_experiments(max_results=1)   # creates the schema
        tmp.replace(path)
    finally:
        for suffix in SQLITE_SIDE_FILES:
            Path(f"{tmp}{suffix}").unlink(missing_ok=True)


def server_unavailable(uri: str, error: BaseException) -> bool:
    """A failure that an HTTP tracking server gets over by itself: no answer (it is restarting),
    or an answer 5xx (its database is restarting). Not a refusal (4xx), nor any SQLite error."""
    if not uri.startswith(HTTP):
        return False
    if isinstance(error, ServerUnreachable | OSError):   # requests' errors are OSErrors
        return True
    status = getattr(error, "get_http_status_code", None)   # an MlflowException
    return status is not None and status() >= 500


def waiting(uri: str, wait: float, action: Callable[[], T], doing: str) -> T:
    """`action()`, tried again every WAIT_POLL seconds for up to `wait` seconds while it fails as
    an HTTP server that restarts does (one line says so); any other failure, or the last one, is
    one paragraph: the job cannot `doing` (open, write to) the store."""
    deadline, told = time.monotonic() + wait, False
    while True:
        try:
            return action()
        except Exception as error:  # waited for, or reported as one paragraph
            if not server_unavailable(uri, error) or time.monotonic() >= deadline:
                if isinstance(error, UserError):
                    raise
                raise store_error(uri, error, doing) from error
            if not told:
                print(f"waiting up to {wait:.0f} s (SSL_REPRO_TRACKING_WAIT) for the MLflow "
                      f"tracking server {uri!r} to answer ({type(error).__name__}: "
                      f"{' '.join(str(error).split())[:200]})", file=sys.stderr, flush=True)
                told = True
        time.sleep(min(WAIT_POLL, max(deadline - time.monotonic(), 0.1)))


def client(wait: float = 0.0):
    """An MlflowClient on the tracking URI; a store that cannot be opened is a user error. An HTTP
    server that does not answer is waited for up to `wait` seconds."""
    uri = tracking_uri()
    return waiting(uri, wait, lambda: open_store(uri), "open")


def open_store(uri: str):
    check_server_reachable(uri)   # before importing mlflow: seconds, not minutes
    from mlflow.tracking import MlflowClient

    path = sqlite_path(uri)
    with sqlite_schema_lock(path):   # opening the store creates or migrates its schema
        if path is not None and not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            create_sqlite_store(path)
        tracking = MlflowClient(uri)
        retry(lambda: tracking.search_experiments(max_results=1), "reach the tracking store")
    return tracking


def file_system(path: Path, mountinfo: Path | None = None) -> str | None:
    """The type of the file system that holds `path` (that of the deepest mount point above its
    real path, in the kernel's mount table); None without a mount table (not Linux)."""
    try:
        table = (mountinfo or MOUNTINFO).read_text().splitlines()
    except OSError:
        return None
    real, deepest, kind = os.path.realpath(path), "", None
    for line in table:   # ID parent major:minor root MOUNT-POINT options [optional...] - TYPE ...
        fields = line.split()
        mount_point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
        inside = real == mount_point or real.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) >= len(deepest):   # a later mount hides an earlier one
            deepest, kind = mount_point, fields[fields.index("-") + 1]
    return kind


def check_sqlite_location(uri: str, other_hosts: bool) -> str | None:
    """A SQLite store on a network file system: refused (UserError) when the jobs run on other
    hosts (`other_hosts`: a cluster); on one machine, whose processes share one client's locks,
    a warning to print. None for any other store."""
    path = sqlite_path(uri)
    kind = file_system(path) if path is not None else None
    if kind not in NETWORK_FILE_SYSTEMS:
        return None
    what = (f"the MLflow tracking store {path.resolve()} is a SQLite file on a network file "
            f"system ({kind}). SQLite relies on file locks that such file systems do not give "
            f"reliably across hosts, and jobs writing to one SQLite file from several hosts can "
            f"corrupt it (every run of the study with it) or stall on 'database is locked'")
    server = ("start an `mlflow server` on PostgreSQL and export MLFLOW_TRACKING_URI=http://<its "
              "host>:<port> before snakemake (profiles/README.md, 'MLflow on a cluster')")
    if other_hosts:
        raise UserError(f"{what}, as this study's jobs would: they run on the cluster's nodes. "
                        f"Nothing was started. To track a study on a cluster, {server}")
    return (f"warning: {what}. Here every job runs on this machine, so it goes on; to run "
            f"the study on a cluster, {server}")


def store_error(uri: str, error: BaseException, doing: str) -> UserError:
    """One paragraph for a failure to `doing` (open, write to) the store at `uri`: which kind of
    failure it is and what to do, with the store's own whole message."""
    detail = f"{type(error).__name__}: {' '.join(str(error).split())}"
    path = sqlite_path(uri)
    if transient(error):
        return UserError(
            f"cannot {doing} the MLflow tracking store {uri!r}: it stayed locked by another "
            f"process for about 30 s ({detail}). Something holds a write lock on it: an `mlflow "
            f"ui` or server with a long request, or jobs on several machines sharing the file "
            f"over a network file system (SQLite does not support that: give them an `mlflow "
            f"server` through MLFLOW_TRACKING_URI). Wait and rerun snakemake")
    if "disk is full" in str(error) or "No space left" in str(error):
        return UserError(
            f"cannot {doing} the MLflow tracking store {uri!r}: its disk is full ({detail}). "
            f"Free space there and rerun snakemake; finished work is kept")
    if path is not None and path.exists():
        half_built = half_built_store(path, error)
        if half_built:
            return UserError(half_built)
    if uri.startswith(HTTP) and "Invalid Host header" in str(error):
        return UserError(
            f"cannot {doing} the MLflow tracking server {uri!r}: it refuses requests made to "
            f"this host name ({detail}). An `mlflow server` accepts only localhost and private IP "
            f"addresses unless told otherwise: start it with `--allowed-hosts "
            f"{urllib.parse.urlsplit(uri).netloc}` (profiles/README.md), or use its IP address "
            f"in MLFLOW_TRACKING_URI")
    if uri.startswith(HTTP):
        return UserError(
            f"cannot {doing} the MLflow tracking server {uri!r}: it answered with an error "
            f"({detail}). Its own log says more; fix the server or MLFLOW_TRACKING_URI (unset, "
            f"the default is {DEFAULT_URI} in the working directory) and rerun snakemake")
    return UserError(
        f"cannot {doing} the MLflow tracking store {uri!r} (MLFLOW_TRACKING_URI) ({detail}). Fix "
        f"MLFLOW_TRACKING_URI, or unset it to use the default {DEFAULT_URI} in the working "
        f"directory, and rerun snakemake")


SCHEMA_ERRORS = ("already exists", "no such table", "duplicate column", "locate revision")


def half_built_store(path: Path, error: BaseException) -> str | None:
    """What to say about a SQLite file that MLflow could not open as a store because it is not a
    whole one (not a database; a schema creation cut short), or None."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            tables = {row[0] for row in db.execute(
                "select name from sqlite_master where type = 'table'")}
            version = (db.execute("select version_num from alembic_version").fetchone()
                       if "alembic_version" in tables else None)
            runs = db.execute("select count(*) from runs").fetchone()[0] if "runs" in tables else 0
    except sqlite3.DatabaseError as reason:
        return (f"the MLflow tracking store {path} is not a SQLite database ({reason}; MLflow "
                f"said {type(error).__name__}: {' '.join(str(error).split())}). Move it aside "
                f"or delete it and rerun snakemake: a new store is created")
    if version is not None and not any(part in str(error) for part in SCHEMA_ERRORS):
        return None
    where = "no schema version" if version is None else f"schema version {version[0]}"
    advice = (f"It holds no runs: delete {path} and rerun snakemake, which creates a whole new "
              f"store" if runs == 0 else
              f"It holds {runs} runs: keep a copy, then try `mlflow db upgrade sqlite:///"
              f"{path.resolve()}`, or move it aside and rerun snakemake to start a new store")
    return (f"the MLflow tracking store {path} is half-built: its schema was being created or "
            f"migrated when that was cut short ({len(tables)} tables, {where}; MLflow said "
            f"{type(error).__name__}: {' '.join(str(error).split())}). {advice}")
