"""A reward served over HTTP: :class:`RemoteReward` (client) and :func:`serve` (stdlib server).

Protocol (JSON, NaN sent as null):
``POST /score`` ``{"prompts", "completions", "metadata", "group_index", "completion_ids", "trainer_state"}`` →
200 ``{"rewards": [...], "metrics": {key: [...]}}``; 400 ``{"error"}`` for a bad request;
500 ``{"error"}`` when the reward tree fails. ``GET /health`` → ``{"status": "ok", "reward": name}``.

Facing a network: at most ``max_connections`` connections are served at once (beyond: an
immediate 503, which :class:`RemoteReward` retries); the request line and headers must arrive within
``read_timeout`` seconds in total (else the connection is closed); with a token (environment
variable :data:`TOKEN_ENV` on both sides) ``/score`` needs ``Authorization: Bearer <token>``
(401 otherwise, compared in constant time, before the body is read); the body size is checked from
``Content-Length`` before anything is read (400 malformed, 411 missing, 413 too large); the body
must arrive within another ``read_timeout`` seconds (408); token-id batches whose padded tensors
would outgrow the body are refused (400), so a request costs a bounded multiple of its body.
"""
from __future__ import annotations

import hmac
import json
import logging
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import torch

from reward_models.base import OnError, Reward
from reward_models.rollouts import output_from_payload, output_to_payload, samples_from_payload, samples_to_payload
from reward_models.types import RewardOutput, Samples

log = logging.getLogger("reward_models")
MAX_BODY = 16 << 20  #: default request body limit in bytes (``serve-reward --max-body-mb``)
MAX_CONNECTIONS = 64  #: default cap on connections served at once (``serve-reward --max-connections``)
TOKEN_ENV = "TREPO_REWARD_TOKEN"  #: environment variable holding the shared bearer token
RETRY_STATUS = {502, 503, 504}


def group_chunks(groups: list[int], batch_size: int) -> list[list[int]]:
    """Consecutive chunks of row indices of at most ``batch_size`` rows that never split a group
    (a group larger than ``batch_size`` is one chunk), so group statistics on the server hold."""
    order: dict[int, list[int]] = {}
    for i, g in enumerate(groups):
        order.setdefault(g, []).append(i)
    chunks: list[list[int]] = []
    current: list[int] = []
    for rows in order.values():
        if current and len(current) + len(rows) > batch_size:
            chunks.append(current)
            current = []
        current = current + rows
    return chunks + ([current] if current else [])


class RemoteReward(Reward):
    """Score by POSTing batches to a reward server started with ``lightning-trepo serve-reward``.

    Batches keep groups whole. Connection errors, timeouts and HTTP 502/503/504 are retried
    ``retries`` times with exponential backoff (``backoff · 2^k`` s); other HTTP errors raise at once
    with the server's message. The server's metric keys become this node's metrics. Not
    deduplicated client-side (the served tree dedups its own leaves, with whole groups).
    """

    deduplicate = False

    def __init__(
        self,
        url: str,
        timeout: float = 60.0,
        retries: int = 2,
        batch_size: int = 256,
        backoff: float = 0.5,
        headers: dict[str, str] | None = None,
        token_env: str | None = TOKEN_ENV,
        on_error: OnError = "raise",
    ) -> None:
        """
        Args:
            url: server base URL, e.g. ``http://rm-host:8000``.
            timeout: seconds per HTTP request.
            retries: extra attempts after a transient failure.
            batch_size: rows per request (groups are never split).
            backoff: first retry delay in seconds (doubles each retry).
            headers: extra HTTP headers.
            token_env: environment variable with the server's bearer token; when it is set (and not
                empty) every request carries ``Authorization: Bearer <token>``. None = never send one.
            on_error: ``"raise"`` or ``"nan"`` (NaN + ``failed``) when the server cannot score.
        """
        if retries < 0 or batch_size < 1 or timeout <= 0:
            raise ValueError("RemoteReward: need retries >= 0, batch_size >= 1, timeout > 0")
        self.url, self.request_timeout, self.retries = url.rstrip("/"), float(timeout), int(retries)
        self.batch_size, self.backoff, self.headers = int(batch_size), float(backoff), dict(headers or {})
        self.token_env = token_env
        self.set_policy(on_error, None)

    def _auth_headers(self) -> dict[str, str]:
        token = os.environ.get(self.token_env, "") if self.token_env else ""
        return {"Authorization": f"Bearer {token}"} if token else {}

    def _post(self, body: bytes) -> dict[str, Any]:
        request = urllib.request.Request(
            f"{self.url}/score",
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", **self._auth_headers(), **self.headers},
        )
        for attempt in range(self.retries + 1):
            try:
                with urllib.request.urlopen(request, timeout=self.request_timeout) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as err:
                message = _error_text(err)
                if err.code == 401:
                    message += f" (set {self.token_env or 'the token variable'} to the server's token)"
                if err.code not in RETRY_STATUS or attempt == self.retries:
                    raise RuntimeError(f"reward server {self.url} answered HTTP {err.code}: {message}") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
                if attempt == self.retries:
                    raise ConnectionError(
                        f"reward server {self.url} unreachable after {attempt + 1} attempts: {err}"
                    ) from err
            time.sleep(self.backoff * 2**attempt)
        raise AssertionError("unreachable")

    def forward(self, samples: Samples) -> RewardOutput:
        n = len(samples)
        groups = samples.group_index.tolist() if samples.group_index is not None else list(range(n))
        return RewardOutput.scatter(n, ((torch.tensor(rows, dtype=torch.long), self._score_rows(samples, rows))
                                        for rows in group_chunks(groups, self.batch_size)))

    def _score_rows(self, samples: Samples, rows: list[int]) -> RewardOutput:
        body = json.dumps(samples_to_payload(samples.select(rows)), default=str).encode()
        return output_from_payload(self._post(body), len(rows))


def _error_text(err: urllib.error.HTTPError) -> str:
    try:
        return json.loads(err.read()).get("error", "")
    except Exception:  # noqa: BLE001 - any unreadable body
        return err.reason or ""


class _BadRequest(Exception):
    """An HTTP error answer: ``status`` and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _check_token_cells(payload: Any, limit: int) -> None:
    """Refuse token ids whose padded (N, L) tensors would hold more than ``limit`` cells."""
    ids = payload.get("completion_ids") if isinstance(payload, dict) else None
    if isinstance(ids, list) and ids:
        width = max((len(row) for row in ids if isinstance(row, list)), default=0)
        if len(ids) * width > limit:
            raise _BadRequest(400, f"completion_ids pad to {len(ids)} x {width} tokens, over the server's {limit} "
                                   "cells; send smaller batches (RemoteReward batch_size)")


def _check_containers(body: bytes, limit: int) -> None:
    """Refuse bodies that could decode into more than ``limit`` JSON arrays and objects (each one a
    Python object of ~64 bytes from as little as 2 bytes of JSON); brackets inside strings count too."""
    count = body.count(b"[") + body.count(b"{")
    if count > limit:
        raise _BadRequest(400, f"request holds up to {count} JSON arrays/objects, over the server's {limit}")


class _Handler(BaseHTTPRequestHandler):
    server: RewardServer
    protocol_version = "HTTP/1.0"

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.read_timeout)  # socket timeout for each read
        self.server.set_deadline(self.connection, self.server.read_timeout)  # request line + headers in total

    def parse_request(self) -> bool:
        ok = super().parse_request()
        self.server.set_deadline(self.connection, None)  # the headers are in; the body has its own deadline
        return ok

    def _send(self, status: int, payload: dict[str, Any]) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (its timeout)
            log.warning("reward client %s disconnected before the response", self.address_string())

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        if self.path.rstrip("/") == "/health":
            self._send(200, {"status": "ok", "reward": type(self.server.reward).__name__})
        else:
            self._send(404, {"error": f"no route {self.path}; use POST /score or GET /health"})

    def _authorize(self) -> None:
        token = self.server.token
        if token is None:
            return
        sent = (self.headers.get("Authorization") or "").encode("utf-8", "replace")
        if not hmac.compare_digest(sent, b"Bearer " + token.encode()):
            raise _BadRequest(401, "missing or wrong bearer token")

    def _content_length(self) -> int:
        raw = self.headers.get("Content-Length")
        if raw is None:
            raise _BadRequest(411, "Content-Length required")
        if not raw.strip().isdigit():
            raise _BadRequest(400, f"malformed Content-Length {raw[:40]!r}")
        length = int(raw)
        if length > self.server.max_body:
            raise _BadRequest(413, f"request body of {length} bytes exceeds {self.server.max_body}; "
                                   "send smaller batches (RemoteReward batch_size)")
        return length

    def _read_body(self, length: int) -> bytes:
        """The body, read in chunks that must all arrive within ``read_timeout`` seconds in total."""
        deadline, chunks, left = time.monotonic() + self.server.read_timeout, [], length
        while left:
            try:
                chunk = self.rfile.read1(min(left, 1 << 20)) if time.monotonic() < deadline else None
            except TimeoutError:
                chunk = None
            if chunk is None:
                raise _BadRequest(408, f"request body not received within {self.server.read_timeout:g} s")
            if not chunk:
                raise _BadRequest(400, f"request body ended after {length - left} of {length} bytes")
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def _discard(self, seconds: float = 1.0, cap: int = 64 << 20) -> None:
        """After an early error answer, swallow (and drop) what the client is still sending for a
        moment, so it reads the answer instead of a connection reset."""
        deadline, total = time.monotonic() + seconds, 0
        self.connection.settimeout(0.1)
        while time.monotonic() < deadline and total < cap:
            try:
                chunk = self.rfile.read1(1 << 16)
            except (TimeoutError, OSError, ValueError):
                return
            if not chunk:
                return
            total += len(chunk)

    def _samples(self) -> Samples:
        self._authorize()
        length = self._content_length()
        body = self._read_body(length)
        try:
            _check_containers(body, self.server.max_body // 16)
            payload = json.loads(body)
            del body
            _check_token_cells(payload, self.server.max_body // 4)
            return samples_from_payload(payload)
        except (ValueError, TypeError, AttributeError, RecursionError) as err:
            raise _BadRequest(400, f"bad request: {err}") from None

    def do_POST(self) -> None:  # noqa: N802
        if self.path.rstrip("/") != "/score":
            self._send(404, {"error": f"no route {self.path}; use POST /score"})
            return
        try:
            samples = self._samples()
        except _BadRequest as err:
            self.close_connection = True
            self._send(err.status, {"error": str(err)})
            self._discard()
            return
        try:
            with self.server.lock:
                out = self.server.reward(samples)
        except Exception as err:  # noqa: BLE001 - reported to the client, logged here
            log.exception("reward tree failed")
            self._send(500, {"error": f"{type(err).__name__}: {err}"})
            return
        self._send(200, output_to_payload(out))

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature of the base
        log.debug("%s - %s", self.address_string(), format % args)


class RewardServer(ThreadingHTTPServer):
    """HTTP server holding a reward tree; calls are serialised by a lock (trees may hold state).
    Serves at most ``max_connections`` connections at once (503 beyond); a reaper thread closes
    connections whose request line and headers outlive ``read_timeout``."""

    daemon_threads = True
    request_queue_size = 128  #: listen backlog: many trainers may connect at once

    def __init__(self, reward: Reward, host: str = "127.0.0.1", port: int = 8000, token: str | None = None,
                 max_body: int = MAX_BODY, read_timeout: float = 30.0, max_connections: int = MAX_CONNECTIONS) -> None:
        if token is not None and not token:
            raise ValueError("RewardServer: the token must not be empty (None = no authentication)")
        if max_connections < 1 or read_timeout <= 0:
            raise ValueError("RewardServer: max_connections >= 1 and read_timeout > 0 required")
        super().__init__((host, port), _Handler)
        self.reward, self.lock = reward, threading.Lock()
        self.token, self.max_body, self.read_timeout = token, int(max_body), float(read_timeout)
        self.max_connections, self.active, self._count_lock = int(max_connections), 0, threading.Lock()
        self._deadlines: dict[socket.socket, float] = {}
        self._closed = threading.Event()
        threading.Thread(target=self._reap, name="reward-server-reaper", daemon=True).start()

    def set_deadline(self, conn: socket.socket, seconds: float | None) -> None:
        """Close ``conn`` unless it is done reading headers within ``seconds`` (None: no deadline)."""
        with self._count_lock:
            if seconds is None:
                self._deadlines.pop(conn, None)
            else:
                self._deadlines[conn] = time.monotonic() + seconds

    def _reap(self) -> None:
        while not self._closed.wait(0.1):
            now = time.monotonic()
            with self._count_lock:
                late = [conn for conn, deadline in self._deadlines.items() if deadline < now]
                for conn in late:
                    del self._deadlines[conn]
            for conn in late:
                try:
                    conn.shutdown(socket.SHUT_RDWR)  # the handler's blocked read returns: it ends
                except OSError:
                    pass

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._count_lock:
            full = self.active >= self.max_connections
            self.active += not full
        if full:
            body = json.dumps({"error": f"server busy: {self.max_connections} connections open; retry"}).encode()
            try:
                request.settimeout(0.5)
                request.sendall(b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                                b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._release(request)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release(request)

    def _release(self, request: Any) -> None:
        with self._count_lock:
            self.active -= 1
            self._deadlines.pop(request, None)

    def server_close(self) -> None:
        self._closed.set()
        super().server_close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("reward server: error while handling a request from %s", client_address)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


def serve(reward: Reward, host: str = "127.0.0.1", port: int = 8000, token: str | None = None,
          max_body: int = MAX_BODY, read_timeout: float = 30.0, max_connections: int = MAX_CONNECTIONS) -> None:
    """Serve ``reward`` until interrupted (``port=0`` picks a free port; the URL is printed)."""
    server = RewardServer(reward, host, port, token, max_body, read_timeout, max_connections)
    auth = "bearer token required" if token else "NO authentication"
    print(f"serving {type(reward).__name__} on {server.url} (POST /score, GET /health; {auth})", flush=True)
    if token is None and host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serve-reward: %s is reachable beyond this machine WITHOUT authentication; set %s", host, TOKEN_ENV)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
