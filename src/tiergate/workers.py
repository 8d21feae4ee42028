"""Several serving processes on one port: the supervisor behind ``serve --workers N``.

Each worker is a process of its own (``python -m tiergate.workers``, started fresh, not
forked from a parent holding onnxruntime threads): it loads the config and the models,
then binds its *own* listening socket to host:port with ``SO_REUSEPORT``. The kernel
hashes every new connection to one of the listeners, so connections spread evenly
even when clients keep them alive (uvicorn's ``--workers`` shares one accept queue,
and kept-alive connections pile onto whichever worker accepted first). A worker binds
only once its models are loaded, so no connection waits on a process not yet able to
answer, and a dead worker's listener closes with it.

The :class:`Supervisor` starts the workers, forwards SIGHUP (reload the calibration)
and SIGINT/SIGTERM for a graceful
stop, restarts a worker that dies (bounded backoff, :class:`RestartPolicy`) and fails
fast when a worker dies while starting.

Metrics use prometheus_client's multiprocess mode: the supervisor gives the workers one
fresh folder (``PROMETHEUS_MULTIPROC_DIR``), each worker writes its values to mmap'd
files there, and ``/metrics`` on any worker merges all the files. Why not one registry
per worker with a ``pid`` label: a scrape reaches one random worker, so it would see a
random slice of the service; with the shared folder every scrape sees the whole service,
and a restarted worker does not reset counters (a dead process's counter files stay,
so totals never go backwards). Gauges declare how they combine (``multiprocess_mode``:
in-flight inputs add up, readiness is the minimum, the rest the maximum) over live
workers only. The folder is removed when the supervisor exits.
"""

from __future__ import annotations

import errno
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import uvicorn

from tiergate.config import load_config, worker_environ
from tiergate.drain import DrainingServer
from tiergate.errors import ConfigError, TiergateError

if TYPE_CHECKING:
    from tiergate.service import Service

__all__ = ["RestartPolicy", "Supervisor", "check_port_free", "reuseport_socket", "run_worker"]

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass(frozen=True)
class RestartPolicy:
    """How the supervisor restarts a worker that died.

    The n-th death within ``window_s`` waits ``backoff_s * 2**(n-1)`` seconds (at most
    ``max_backoff_s``) before the restart; after more than ``max_restarts`` deaths
    within the window the supervisor gives up (exit 1) instead of crash-looping.

    >>> RestartPolicy().delay(3)
    2.0
    """

    max_restarts: int = 5
    window_s: float = 60.0
    backoff_s: float = 0.5
    max_backoff_s: float = 10.0

    def __post_init__(self) -> None:
        if self.max_restarts < 0 or self.window_s <= 0 or self.backoff_s < 0:
            raise ConfigError(f"invalid restart policy: {self!r}")
        if self.max_backoff_s < self.backoff_s:
            raise ConfigError(f"invalid restart policy (max_backoff_s < backoff_s): {self!r}")

    def delay(self, deaths: int) -> float:
        """Seconds to wait before the restart that follows the ``deaths``-th recent death."""
        return min(self.backoff_s * 2.0 ** max(deaths - 1, 0), self.max_backoff_s)


def _address(host: str, port: int) -> tuple[socket.AddressFamily, Any]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"cannot resolve --host {host!r}: {exc.strerror}", host=host) from None
    family, _, _, _, addr = infos[0]
    return family, addr


def _bind_error(host: str, port: int, exc: OSError) -> ConfigError:
    if exc.errno == errno.EADDRINUSE:
        return ConfigError(
            f"address {host}:{port} is already in use (another server?): stop it or choose "
            f"another --port", host=host, port=port,
        )  # fmt: skip
    return ConfigError(f"cannot bind {host}:{port}: {exc.strerror}", host=host, port=port)


def reuseport_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` with ``SO_REUSEPORT``, not yet listening.

    Each worker binds one; the kernel spreads new connections across the listeners.
    Raises :class:`ConfigError` if the address cannot be bound.
    """
    family, addr = _address(host, port)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(addr)
    except OSError as exc:
        sock.close()
        raise _bind_error(host, port, exc) from None
    return sock


def check_port_free(host: str, port: int) -> None:
    """Raise :class:`ConfigError` if something already listens on ``host:port``.

    The probe binds *without* ``SO_REUSEPORT``, so it also fails when another
    ``--workers`` server holds the port (which workers would otherwise silently join).
    """
    family, addr = _address(host, port)
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(addr)
        except OSError as exc:
            raise _bind_error(host, port, exc) from None


class _NotifyingServer(DrainingServer):
    """A draining uvicorn server that tells the supervisor (one byte on a pipe) once it
    accepts."""

    def __init__(
        self, config: uvicorn.Config, service: Service, grace_s: float, ready_fd: int | None
    ) -> None:
        super().__init__(config, service, grace_s=grace_s)
        self._ready_fd = ready_fd

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started and self._ready_fd is not None:
            os.write(self._ready_fd, b"r")
            os.close(self._ready_fd)
            self._ready_fd = None


def run_worker(
    config_path: Path,
    host: str,
    port: int,
    *,
    log_level: str = "info",
    ready_fd: int | None = None,
) -> int:
    """Serve as one worker: load the config and models, bind, run uvicorn; the exit code.

    The socket is bound with ``SO_REUSEPORT`` only after the models are loaded. On a
    :class:`TiergateError` at start-up, prints ``error: <message>`` and returns 2.
    """
    from tiergate.api import create_app
    from tiergate.service import Service

    try:
        service = Service.from_config(load_config(config_path))
        sock = reuseport_socket(host, port)
    except TiergateError as exc:
        sys.stderr.write(f"error: {exc.message}\n")
        return 2
    config = uvicorn.Config(
        create_app(service), log_level=log_level, access_log=False, loop="auto", http="auto",
    )  # fmt: skip
    _NotifyingServer(config, service, service.config.drain_grace_s, ready_fd).run(sockets=[sock])
    return 0


def _exit_with_parent(parent: int) -> bool:
    """Ask Linux to SIGTERM this worker when the supervisor dies; False if it already has."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGTERM))
    return os.getppid() == parent


def _describe(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


@dataclass
class _Slot:
    """One worker position; its process changes on every restart."""

    index: int
    proc: subprocess.Popen[bytes] | None = None
    ready_fd: int | None = None
    ready: bool = False
    restart_at: float | None = None


class Supervisor:
    """Runs ``workers`` processes serving one config on one port (see the module docs).

    >>> Supervisor(Path("config.yaml"), workers=2, port=8000).run()  # doctest: +SKIP
    0

    ``log`` receives one line per event (default: stderr). Lines a caller may rely on:
    ``worker I: pid P started`` and ``N/N workers ready on URL; metrics in DIR``.
    """

    def __init__(
        self,
        config_path: Path,
        *,
        workers: int,
        host: str = "127.0.0.1",
        port: int = 8000,
        log_level: str = "info",
        policy: RestartPolicy | None = None,
        grace_s: float = 20.0,
        log: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if workers < 1:
            raise ConfigError(f"--workers must be at least 1, got {workers}")
        if port == 0:
            raise ConfigError("--workers needs a fixed --port (0 would give each its own)")
        if not hasattr(socket, "SO_REUSEPORT"):
            raise ConfigError("--workers > 1 needs SO_REUSEPORT (Linux); use one worker")
        self.config_path = Path(config_path)
        self.workers = workers
        self.host = host
        self.port = port
        self.log_level = log_level
        self.policy = policy or RestartPolicy()
        self.grace_s = grace_s
        self.log = log or (lambda line: print(f"tiergate: {line}", file=sys.stderr, flush=True))
        self._clock = clock
        self._slots = [_Slot(i) for i in range(workers)]
        self._deaths: list[float] = []
        self._signals = 0
        self._up = False
        self._selector = selectors.DefaultSelector()
        self._dir: Path | None = None  # the metrics folder, while running

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def run(self) -> int:
        """Start the workers and supervise them until SIGINT/SIGTERM; the exit code.

        0 after a signal-initiated stop; the worker's code (or 1) if one fails while
        the service is starting; 1 if workers keep dying. Raises :class:`ConfigError`
        before starting anything if the config is invalid or the port is taken.
        """
        cfg = load_config(self.config_path)
        check_port_free(self.host, self.port)
        self.log(f"loading {cfg.service} from {self.config_path} in {self.workers} workers …")
        previous = {sig: signal.signal(sig, self._on_signal) for sig in _STOP_SIGNALS}
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, self._forward_hup)
        try:
            self._dir = Path(tempfile.mkdtemp(prefix="tiergate-metrics-"))
            for slot in self._slots:
                self._start(slot)
            code = self._supervise()
        finally:
            self._stop_all()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._selector.close()
            if self._dir is not None:
                shutil.rmtree(self._dir, ignore_errors=True)
                self._dir = None
        self.log("stopped" if code == 0 else f"stopped (exit code {code})")
        return code

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals += 1

    def _forward_hup(self, signum: int, frame: FrameType | None) -> None:
        # SIGHUP: every worker reloads its calibration (see tiergate.api.app).
        for slot in self._slots:
            if slot.proc is not None and slot.proc.poll() is None:
                slot.proc.send_signal(signal.SIGHUP)

    def _start(self, slot: _Slot) -> None:
        assert self._dir is not None
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        cmd = [
            sys.executable, "-m", "tiergate.workers", str(self.config_path), self.host,
            str(self.port), self.log_level, str(write_fd), str(os.getpid()),
        ]  # fmt: skip
        try:
            proc = subprocess.Popen(cmd, env=worker_environ(self._dir), pass_fds=(write_fd,))
        except OSError:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        slot.proc, slot.ready_fd, slot.ready, slot.restart_at = proc, read_fd, False, None
        self._selector.register(read_fd, selectors.EVENT_READ, slot)
        self.log(f"worker {slot.index}: pid {proc.pid} started")

    def _read_ready(self, slot: _Slot) -> None:
        if slot.ready_fd is None:
            return
        try:
            data = os.read(slot.ready_fd, 16)
        except BlockingIOError:
            return
        self._selector.unregister(slot.ready_fd)
        os.close(slot.ready_fd)
        slot.ready_fd = None
        if not data:  # closed without a word: the worker died starting; poll() will say
            return
        slot.ready = True
        if not self._up and all(s.ready for s in self._slots):
            self._up = True
            self.log(
                f"{self.workers}/{self.workers} workers ready on {self.url}; metrics in {self._dir}"
            )
        elif self._up and slot.proc is not None:
            self.log(f"worker {slot.index}: pid {slot.proc.pid} ready")

    def _supervise(self) -> int:
        while not self._signals:
            for key, _ in self._selector.select(timeout=0.1):
                self._read_ready(key.data)
            now = self._clock()
            for slot in self._slots:
                if slot.proc is not None and (code := slot.proc.poll()) is not None:
                    failed = self._died(slot, code, now)
                    if failed is not None:
                        return failed
                if slot.proc is None and slot.restart_at is not None and now >= slot.restart_at:
                    self._start(slot)
        return 0

    def _reap(self, slot: _Slot) -> int:
        """Forget a dead worker: its ready pipe, and its live gauges in the metrics folder."""
        from prometheus_client import multiprocess

        self._read_ready(slot)  # a worker may say ready and die before we looked
        if slot.ready_fd is not None:
            self._selector.unregister(slot.ready_fd)
            os.close(slot.ready_fd)
            slot.ready_fd = None
        assert slot.proc is not None
        pid = slot.proc.pid
        if self._dir is not None:
            multiprocess.mark_process_dead(pid, str(self._dir))  # type: ignore[no-untyped-call]
        slot.proc = None
        return pid

    def _died(self, slot: _Slot, code: int, now: float) -> int | None:
        """Handle an unexpected exit; an exit code if the supervisor must give up."""
        was_ready = slot.ready
        pid = self._reap(slot)
        how = _describe(code)
        if not (was_ready or slot.ready) and not self._up:
            self.log(f"worker {slot.index}: pid {pid} failed to start ({how}); stopping")
            return code if code > 0 else 1
        self._deaths = [t for t in self._deaths if now - t < self.policy.window_s] + [now]
        if len(self._deaths) > self.policy.max_restarts:
            self.log(
                f"worker {slot.index}: pid {pid} died ({how}); {len(self._deaths)} deaths "
                f"within {self.policy.window_s:g} s, giving up"
            )
            return 1
        delay = self.policy.delay(len(self._deaths))
        self.log(f"worker {slot.index}: pid {pid} died ({how}); restarting in {delay:g} s")
        slot.restart_at = now + delay
        return None

    def _stop_all(self) -> None:
        """SIGTERM every worker, wait up to ``grace_s`` (a second signal: SIGKILL at once)."""
        live = [s for s in self._slots if s.proc is not None]
        signals_seen = self._signals
        for slot in live:
            assert slot.proc is not None
            if slot.proc.poll() is None:
                slot.proc.send_signal(signal.SIGTERM)
        deadline = self._clock() + self.grace_s
        forced = False
        for slot in live:
            assert slot.proc is not None
            while True:
                try:
                    slot.proc.wait(timeout=0.05)
                    break
                except subprocess.TimeoutExpired:
                    if forced or (self._signals == signals_seen and self._clock() < deadline):
                        continue
                    forced = True
                    self.log("workers did not stop in time: killing them")
                    for other in live:
                        if other.proc is not None and other.proc.poll() is None:
                            other.proc.kill()
        for slot in live:
            self._reap(slot)


if __name__ == "__main__":
    _config, _host, _port, _level, _ready, _parent = sys.argv[1:]
    # Ctrl-C reaches the whole process group; the supervisor turns it into one SIGTERM
    # per worker, so a worker still loading its models does not die with a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if not _exit_with_parent(int(_parent)):
        sys.exit(1)
    sys.exit(run_worker(Path(_config), _host, int(_port), log_level=_level, ready_fd=int(_ready)))
