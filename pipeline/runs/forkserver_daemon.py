"""The fork server's own process (pipeline/runs/forkserver.py says what warm starts are): started
in the background by `python -m pipeline.runs.forkserver_daemon start` (the Snakefile's onstart),
it imports torch and MLflow once, then forks a supervisor for each job that asks, which forks the
job and stands between it and the job's own process (the client): signals, death, exit status.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import os
import select
import signal
import socket
import sys
import time
import traceback
from pathlib import Path

from .forkserver import (FLAVOUR_ENV, FLAVOURS, HEADER, LOG, POLL, PROJECT_PACKAGES, SWITCH,
                         _connect, _receive_request, _send, exit_now, import_time_env,
                         socket_path)


def preload(flavour: str) -> dict[str, str]:
    """Import what every training job imports that is slow to import: torch (with the portable
    flavour's pinned kernels), numpy, and MLflow with the store the jobs will open. Returns the
    import-time environment."""
    if flavour == "portable":
        from .device import PORTABLE_ENV
        os.environ.update(PORTABLE_ENV)
    env = import_time_env(dict(os.environ), "native")
    import numpy  # noqa: F401
    import torch
    import torch.nn.functional  # noqa: F401
    from mlflow.entities import Metric  # noqa: F401
    from mlflow.tracking import MlflowClient  # noqa: F401

    from .tracking_store import tracking_uri
    if tracking_uri().startswith(("http://", "https://")):
        importlib.import_module("mlflow.store.tracking.rest_store")
    else:
        importlib.import_module("mlflow.store.tracking.sqlalchemy_store")
    return env


def cpu_seconds() -> float:
    """CPU time of this process and its ended children: a server's imports and the jobs it ran
    (each supervisor waits for its job; the server waits for the supervisors)."""
    import resource

    own, children = (resource.getrusage(who) for who in (resource.RUSAGE_SELF,
                                                          resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class Job:
    """What the forked job process runs, once the server's loop is left behind."""

    def __init__(self, request: dict, fds: list[int]):
        self.request, self.fds = request, fds

    def run(self) -> int:
        request = self.request
        os.setpgid(0, 0)   # its own group: stopping the job stops what it started
        for target, fd in zip((0, 1, 2), self.fds, strict=True):
            os.dup2(fd, target)
            os.close(fd)
        sys.stdin = io.TextIOWrapper(open(0, "rb", closefd=False))  # noqa: SIM115
        sys.stdout = io.TextIOWrapper(open(1, "wb", closefd=False), write_through=True)  # noqa: SIM115
        sys.stderr = io.TextIOWrapper(open(2, "wb", closefd=False),  # noqa: SIM115
                                      errors="backslashreplace", write_through=True)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(signum, signal.SIG_DFL)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        os.environ[FLAVOUR_ENV] = request["flavour"]
        for name in [name for name in sys.modules if name.split(".")[0] in PROJECT_PACKAGES]:
            del sys.modules[name]   # the job imports this project's code as it is on disk now
        import random
        random.seed()   # as a fresh interpreter: not the server's state, shared by every job
        sys.argv = [request["module"], *request["argv"]]
        try:
            importlib.import_module(request["module"]).main(request["argv"])
        except SystemExit as stop:
            if stop.code is None or isinstance(stop.code, int):
                return stop.code or 0
            print(stop.code, file=sys.stderr)
            return 1
        except KeyboardInterrupt:   # as an interpreter does: the traceback, then die of SIGINT
            traceback.print_exc()
            sys.stderr.flush()
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
        except BaseException:  # noqa: BLE001 - as an interpreter does: the traceback, exit 1
            traceback.print_exc()
            return 1
        return 0


class Server:
    def __init__(self, path: Path, flavour: str, owner: int, log: Path):
        self.path, self.flavour, self.owners, self.log_path = path, flavour, {owner}, log
        self.log_file = open(log, "a", buffering=1)  # noqa: SIM115 - the server's life
        self.env: dict[str, str] = {}

    def log(self, message: str) -> None:
        self.log_file.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} [{os.getpid()}] {message}\n")

    def alive_owners(self) -> set[int]:
        alive = set()
        for pid in self.owners:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                continue
            except PermissionError:
                pass
            alive.add(pid)
        return alive

    def serve(self, listener: socket.socket) -> Job | None:
        """Accept jobs until every owner has exited; in a forked job's process, return its Job."""
        self.log(f"serving {self.path} ({self.flavour} numerics) for Snakemake {self.owners}")
        while True:
            self.owners = self.alive_owners()
            if not self.owners:
                with contextlib.suppress(ChildProcessError):
                    while os.waitpid(-1, 0)[0]:   # the jobs' supervisors still running
                        pass
                self.log(f"its Snakemake process(es) ended: stopping ({cpu_seconds():.1f} s of "
                         f"CPU for its imports and jobs)")
                return None
            with contextlib.suppress(ChildProcessError):
                while os.waitpid(-1, os.WNOHANG)[0]:
                    pass
            ready, _, _ = select.select([listener], [], [], 1.0)
            if not ready:
                continue
            conn, _ = listener.accept()
            try:
                request, fds = _receive_request(conn)
            except EOFError:   # `start` asking whether it answers
                conn.close()
                continue
            except (OSError, ValueError) as error:
                self.log(f"a request failed: {error}")
                conn.close()
                continue
            if "adopt" in request:   # another Snakemake run in the same folder: serve it too
                self.owners.add(int(request["adopt"]))
                self.log(f"also serving Snakemake {request['adopt']}")
                conn.close()
                continue
            if os.fork() == 0:   # the job's supervisor
                listener.close()
                job = self.supervise(conn, request, fds)
                if job is not None:
                    self.log_file.close()
                    return job
                os._exit(0)
            for fd in fds:
                os.close(fd)
            conn.close()

    def refusal(self, request: dict) -> str | None:
        """Why this server cannot run the job (its torch was imported otherwise), or None."""
        if request.get("flavour") != self.flavour:
            return f"the job wants {request.get('flavour')} numerics"
        wanted = import_time_env(request["env"], request["flavour"])
        mismatch = {key: (wanted.get(key), self.env.get(key)) for key in {*wanted, *self.env}
                    if wanted.get(key) != self.env.get(key)}
        if mismatch:
            return ("the job's environment differs from the server's in "
                    + ", ".join(f"{key} ({job!r} against {server!r})"
                                for key, (job, server) in sorted(mismatch.items())))
        return None

    def supervise(self, conn: socket.socket, request: dict, fds: list[int]) -> Job | None:
        """Start the job in a process of its own and wait for it: forward the client's signals,
        kill the job when the client dies, and send the client the job's exit status. Returns
        the Job in the job's process."""
        reason = self.refusal(request)
        if reason:
            self.log(f"declined {request['module']} {' '.join(request['argv'][:2])}: {reason}")
            with contextlib.suppress(OSError):
                _send(conn, {"refused": reason})
            return None
        pid = os.fork()
        if pid == 0:
            conn.close()
            return Job(request, fds)
        with contextlib.suppress(OSError):   # (the job sets it too: whichever runs first)
            os.setpgid(pid, pid)
        for fd in fds:
            os.close(fd)
        self.log(f"job {pid}: {request['module']} {' '.join(request['argv'][:2])}")
        with contextlib.suppress(OSError):
            _send(conn, {"started": pid})
        pending = b""
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                code = os.waitstatus_to_exitcode(status)
                self.log(f"job {pid}: exit {code}")
                with contextlib.suppress(OSError):
                    _send(conn, {"exit": code})
                return None
            ready, _, _ = select.select([conn], [], [], POLL)
            if not ready:
                continue
            data = b""
            with contextlib.suppress(OSError):
                data = conn.recv(4096)
            if not data:   # the client is gone (killed): so goes the job, with its children
                self.log(f"job {pid}: its client ended; killing it")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return None
            pending += data
            *lines, pending = pending.split(b"\n")
            for line in lines:
                signum = int(json.loads(line)["signal"])
                self.log(f"job {pid}: signal {signum} from its client")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signum)


def start(flavour: str, owner: int, wait: float) -> None:
    """Start this folder's server for `flavour` in the background (or, where one serves it
    already, make it serve `owner` too), and wait up to `wait` seconds for it to answer (its
    imports take a few seconds): jobs that start before it answers run in their own
    processes."""
    path = socket_path(flavour)
    conn = _connect(path)
    if conn is not None:
        with conn:
            request = json.dumps({"adopt": owner}).encode()
            with contextlib.suppress(OSError):
                conn.sendall(HEADER.pack(len(request)) + request)
                return
    LOG.parent.mkdir(parents=True, exist_ok=True)
    log = LOG.resolve()
    if os.fork() != 0:
        if wait <= 0:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            conn = _connect(path)
            if conn is not None:
                conn.close()
                return
            time.sleep(0.1)
        print(f"(the fork server did not answer within {wait:.0f} s; training jobs import torch "
              f"and MLflow themselves: see {LOG})", file=sys.stderr)
        return
    # the daemon: its own session, away from the terminal and the working folder
    os.setsid()
    if os.fork() != 0:
        os._exit(0)
    code = 0
    try:
        code = _daemon(path, flavour, owner, log)
    except BaseException as error:  # noqa: BLE001 - logged: nobody reads this process's stderr
        with contextlib.suppress(OSError), open(log, "a") as handle:
            handle.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} [{os.getpid()}] the fork server "
                         f"stopped: {type(error).__name__}: {error}\n")
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(code)


def _daemon(path: Path, flavour: str, owner: int, log: Path) -> int:
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    server = Server(path, flavour, owner, log)
    path.parent.mkdir(mode=0o700, exist_ok=True)
    os.chmod(path.parent, 0o700)
    import fcntl
    lock = open(path.with_suffix(".lock"), "w")  # noqa: SIM115 - held for the server's life
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        server.log("another server is starting for this folder: not starting a second")
        return 0
    cwd = os.getcwd()
    os.chdir("/")
    started = time.monotonic()
    server.env = preload(flavour)
    server.log(f"imported torch and MLflow in {time.monotonic() - started:.1f} s (for {cwd})")
    path.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(64)
    server_pid = os.getpid()
    try:
        job = server.serve(listener)
    finally:
        if os.getpid() == server_pid:   # (not in a job's process)
            path.unlink(missing_ok=True)
    if job is None:
        return 0
    listener.close()
    lock.close()
    exit_now(job.run())
    return 1   # (not reached)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["start"])
    parser.add_argument("--owner", type=int, required=True,
                        help="the Snakemake process: the server stops when it has ended")
    parser.add_argument("--flavour", choices=FLAVOURS, required=True,
                        help="portable: torch imported with train.portable_numerics' pinned "
                             "kernels (the study's setting)")
    parser.add_argument("--wait", type=float, default=60.0,
                        help="seconds to wait for the server to answer (default 60)")
    args = parser.parse_args(argv)
    if os.environ.get(SWITCH, "1") == "0":
        return
    start(args.flavour, args.owner, args.wait)


if __name__ == "__main__":
    main()
