"""Warm starts for training jobs: a fork server that imports torch and MLflow once per study, so
that each training job forks from it instead of importing them again (about 3 s of CPU a job:
benchmarks/README.md, "less start-up per job").

Snakemake's onstart starts a server (`python -m pipeline.runs.forkserver_daemon start --owner
PID`: its process, pipeline/runs/forkserver_daemon.py). It listens on a Unix socket named by the
working folder, the Python environment, the SLURM job (a cluster job never forks from a server
outside its allocation) and the numerics flavour (torch imported with train.portable_numerics'
pinned kernels, or not), and exits when the Snakemake process that started it has. A training
job (`python -m pipeline.runs.train`) asks it to run the job; where no server answers, or the
server cannot run it (its import-time environment differs from the job's, say), the job runs in
its own process as before, with a note in its log. Either way it is the same code on the same
inputs, and its numbers are bit-identical (tests/test_forkserver.py).

A forked job has:
- the job's own standard streams (passed over the socket), working folder, environment and
  arguments;
- the code on disk when it starts: the server's imports of this project's modules are dropped
  before the job imports them, so only third-party modules (torch, numpy, MLflow and its store)
  come from the server;
- a process group of its own, supervised on behalf of the job's process (the client): SIGINT,
  SIGTERM and SIGHUP sent to the client go to the job; the client's death (SIGKILL) kills the job
  and its children; the job's exit status is the client's.

Each job the server starts is a line in logs/forkserver.log. SSL_REPRO_FORKSERVER=0 turns warm
starts off: every job imports everything in its own process.

This module is the side of a training job's own process (the client), and what both sides
share; it imports only the standard library at the top: the client runs before any heavy import.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import struct
import sys
import tempfile
from pathlib import Path

SWITCH = "SSL_REPRO_FORKSERVER"          # "0": no warm starts
FLAVOUR_ENV = "SSL_REPRO_TORCH_IMPORTED"  # in a forked job: the flavour its torch was imported with
FLAVOURS = ("portable", "native")
# Read when torch (or the C libraries under it) is imported, so a forked job inherits the
# server's values: a job whose environment differs in one of these runs in its own process.
IMPORT_TIME_PREFIXES = ("ATEN_", "TORCH_", "PYTORCH_", "MKL_", "KMP_", "LD_", "DNNL_", "ONEDNN_")
IMPORT_TIME_NAMES = ("PYTHONPATH", "PYTHONHASHSEED", "PYTHONNOUSERSITE")
# Set per job by Snakemake and applied by the job itself (torch.set_num_threads): not compared.
PER_JOB_SUFFIX = "_NUM_THREADS"
PROJECT_PACKAGES = ("pipeline", "semisup")
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
POLL = 0.05        # seconds: how often a supervisor looks at its job, the server at its owners
HEADER = struct.Struct("!Q")
LOG = Path("logs") / "forkserver.log"


def exit_now(code: int) -> None:
    """End a finished job's process without tearing down its interpreter: flush the standard
    streams, wait for its non-daemon threads and run its atexit handlers (logging's, MLflow's),
    as an interpreter's exit does, then leave. The teardown skipped, freeing every module's
    objects one by one, takes about 1 s with torch and MLflow imported and does nothing a job
    that has written its outputs needs."""
    import atexit
    import threading

    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


# ---- where a server listens --------------------------------------------------------------------
def socket_path(flavour: str, cwd: str | None = None) -> Path:
    """The socket of the server for jobs started in `cwd` by this Python environment (and SLURM
    job), whose torch was imported with `flavour` numerics."""
    key = json.dumps([os.path.realpath(cwd or os.getcwd()), sys.prefix, sys.executable,
                      os.environ.get("SLURM_JOB_ID", ""), flavour])
    folder = Path(tempfile.gettempdir()) / f"ssl-repro-{os.getuid()}"
    return folder / f"fork-{hashlib.sha256(key.encode()).hexdigest()[:20]}.sock"


def import_time_env(env: dict[str, str], flavour: str) -> dict[str, str]:
    """The variables of `env` that torch and its libraries read when imported (with the pinned
    ones of the portable flavour, which the server sets before importing torch)."""
    if flavour == "portable":
        from .device import PORTABLE_ENV   # (torch-free at import)
        env = {**env, **PORTABLE_ENV}
    return {key: value for key, value in sorted(env.items())
            if (key.startswith(IMPORT_TIME_PREFIXES) or key in IMPORT_TIME_NAMES)
            and not key.endswith(PER_JOB_SUFFIX)}


def _send(conn: socket.socket, message: dict) -> None:
    conn.sendall(json.dumps(message).encode() + b"\n")


def _receive_request(conn: socket.socket) -> tuple[dict, list[int]]:
    header, fds, _, _ = socket.recv_fds(conn, HEADER.size, 3)
    if not header:
        raise EOFError("a connection without a request")
    if len(header) != HEADER.size:
        for fd in fds:
            os.close(fd)
        raise ConnectionError("incomplete request")
    (length,) = HEADER.unpack(header)
    data = b""
    while len(data) < length:
        chunk = conn.recv(length - len(data))
        if not chunk:
            raise ConnectionError("incomplete request")
        data += chunk
    return json.loads(data), fds


def _connect(path: Path) -> socket.socket | None:
    if not path.exists():
        return None
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(str(path))
    except OSError:
        conn.close()
        return None
    return conn


# ---- the client: a training job's own process ----------------------------------------------------
def run_warm(module: str, argv: list[str], flavour: str) -> int | None:
    """Run `module`'s main(argv) in a process forked from this study's server and return its
    exit code; None where no server runs it (the caller then runs it in this process)."""
    if os.environ.get(SWITCH, "1") == "0":
        return None
    conn = _connect(socket_path(flavour))
    if conn is None:
        return None
    with conn:
        request = json.dumps({"module": module, "argv": argv, "cwd": os.getcwd(),
                              "env": dict(os.environ), "flavour": flavour}).encode()
        try:
            socket.send_fds(conn, [HEADER.pack(len(request))], [0, 1, 2])
            conn.sendall(request)
            replies = conn.makefile("rb")
            first = json.loads(replies.readline() or b'{"refused": "it closed the connection"}')
        except OSError as error:
            first = {"refused": f"{type(error).__name__}: {error}"}
        if "refused" in first:
            print(f"(warm start declined: {first['refused']}; this job imports torch and MLflow "
                  f"itself)", file=sys.stderr, flush=True)
            return None

        def forward(signum, _frame):
            with contextlib.suppress(OSError):
                _send(conn, {"signal": signum})

        for signum in FORWARDED:
            signal.signal(signum, forward)
        line = replies.readline()
        if not line:
            print("ssl-repro error: the fork server's supervisor of this job ended without its "
                  "exit status (was it killed?); rerun snakemake, or set SSL_REPRO_FORKSERVER=0 "
                  "to run every job in its own process", file=sys.stderr, flush=True)
            return 1
        code = json.loads(line)["exit"]
    if code < 0:   # the job died of a signal: so does this process, as the job would have
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
        return 128 - code
    return code
