"""The HTTP reward server behind ``lightning-trepo serve-reward``: one asyncio event loop for all the
connections, one worker thread that decodes and scores the requests in turn.

Facing a network (every limit enforced by the server, per connection, in total, not per read):

- the request line and headers must arrive within ``read_timeout`` seconds (else 408 and close), in
  at most :data:`MAX_HEAD` bytes (else 431); the body within another ``read_timeout`` (408); the
  answer must be taken by the client within another ``read_timeout`` (else the connection is cut);
- the body size is checked from ``Content-Length`` before anything is read (400 malformed, 411
  missing, 413 too large), and with a token (:data:`TOKEN_ENV`) ``/score`` needs
  ``Authorization: Bearer <token>`` (401, constant-time compare) before the body is read;
- at most ``capacity`` connections are held: ``max_connections``, lowered to what the process's
  file-descriptor limit leaves. When full, a new connection takes the slot of the oldest one that
  is still sending its request after :data:`EVICT_AFTER` s (that one gets 503, which RemoteReward
  retries); when no slot can be taken, accepting pauses and new connections wait in the kernel's
  listen queue (no descriptor spent) until one can, so no accept fails for want of descriptors;
- one request per connection (HTTP/1.0, ``Connection: close``): no idle keep-alive to hold.
"""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from typing import Any

from reward_models.base import Reward
from reward_models.rollouts import output_to_payload, samples_from_payload
from reward_models.types import Samples

log = logging.getLogger("reward_models")
MAX_BODY = 16 << 20  #: default request body limit in bytes (``serve-reward --max-body-mb``)
MAX_CONNECTIONS = 64  #: default cap on connections held at once (``serve-reward --max-connections``)
MAX_HEAD = 64 << 10  #: request line + headers, bytes (431 beyond)
FD_RESERVE = 32  #: descriptors kept free for the reward tree (sandboxes, model files) and the loop itself
EVICT_AFTER = 0.5  #: seconds a connection may take to send its request before a newcomer may take its slot
TOKEN_ENV = "TREPO_REWARD_TOKEN"  #: environment variable holding the shared bearer token


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


def fd_capacity(max_connections: int, reserve: int = FD_RESERVE) -> int:
    """Connections this process can hold: min(max_connections, fd soft limit - descriptors open now - reserve)."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        in_use = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else 16
    except (ImportError, OSError):  # no rlimits on this platform: trust the configured cap
        return max_connections
    if soft == resource.RLIM_INFINITY:
        return max_connections
    room = soft - in_use - reserve
    if room < 1:
        raise ValueError(f"RewardServer: the file-descriptor limit {soft} (ulimit -n) leaves no room for connections "
                         f"({in_use} open, {reserve} reserved); raise it")
    return min(max_connections, room)


def http_answer(status: int, payload: dict[str, Any]) -> bytes:
    """One whole HTTP/1.0 answer with a JSON body."""
    body = json.dumps(payload).encode()
    head = (f"HTTP/1.0 {status} {HTTPStatus(status).phrase}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    return head.encode() + body


def parse_head(raw: bytes) -> tuple[str, str, dict[str, str]]:
    """``(method, path, headers)`` of a request head ending in a blank line; header names lower-cased."""
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        raise _BadRequest(400, f"malformed request line {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name.strip() or name != name.strip():
            raise _BadRequest(400, f"malformed header line {line[:80]!r}")
        headers[name.lower()] = value.strip()
    return parts[0], parts[1], headers


class _Conn:
    """One held connection: its task, when it was accepted, and whether it is still sending its request."""

    __slots__ = ("task", "since", "reading", "evicted")

    def __init__(self) -> None:
        self.task: asyncio.Task | None = None
        self.since, self.reading, self.evicted = time.monotonic(), True, False


class RewardServer:
    """HTTP server holding a reward tree; the tree is called by one worker thread, one request at a time
    (trees may hold state). ``serve_forever()`` runs it in the calling thread until ``shutdown()``."""

    request_queue_size = 1024  #: listen backlog: connections waiting while every slot is busy cost no descriptor

    def __init__(self, reward: Reward, host: str = "127.0.0.1", port: int = 8000, token: str | None = None,
                 max_body: int = MAX_BODY, read_timeout: float = 30.0, max_connections: int = MAX_CONNECTIONS) -> None:
        if token is not None and not token:
            raise ValueError("RewardServer: the token must not be empty (None = no authentication)")
        if max_connections < 1 or read_timeout <= 0:
            raise ValueError("RewardServer: max_connections >= 1 and read_timeout > 0 required")
        self.reward, self.lock = reward, threading.Lock()
        self.token, self.max_body, self.read_timeout = token, int(max_body), float(read_timeout)
        self.capacity = fd_capacity(int(max_connections))
        self.grace = min(EVICT_AFTER, self.read_timeout / 4)  #: a connection keeps its slot this long in any case
        self.socket = socket.create_server((host, port), backlog=self.request_queue_size)
        self.server_address = self.socket.getsockname()
        self._conns: dict[_Conn, None] = {}  # insertion order = accept order
        self._stopping, self._done, self._serving = threading.Event(), threading.Event(), False

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def serve_forever(self) -> None:
        self._serving = True
        try:
            asyncio.run(self._serve())
        finally:
            self._done.set()

    def shutdown(self) -> None:
        """Stop ``serve_forever`` (from another thread) and wait for it to return."""
        self._stopping.set()
        if self._serving:
            self._done.wait()

    def server_close(self) -> None:
        self._stopping.set()
        self.socket.close()

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        self.socket.setblocking(False)
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="reward-worker")
        self._changed = asyncio.Event()
        accepting = asyncio.create_task(self._accept(loop))
        await loop.run_in_executor(None, self._stopping.wait)
        accepting.cancel()
        for conn in list(self._conns):
            if conn.task is not None:
                conn.task.cancel()
        await asyncio.gather(accepting, *(c.task for c in self._conns if c.task), return_exceptions=True)
        self._worker.shutdown(wait=False, cancel_futures=True)

    async def _accept(self, loop: asyncio.AbstractEventLoop) -> None:
        """Accept while a slot is free or can be taken from a connection still sending its request."""
        while True:
            wait = self._full_for()
            if wait != 0.0:  # every slot busy: newcomers wait in the listen queue, no descriptor spent
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), wait)
                continue
            try:
                sock, _ = await loop.sock_accept(self.socket)
            except OSError as err:  # EMFILE from a reward tree's own descriptors, ECONNABORTED, ...
                log.warning("reward server: accept failed (%s); retrying in 0.1 s", err)
                await asyncio.sleep(0.1)
                continue
            if len(self._conns) >= self.capacity and not self._evict_oldest_reader():
                _refuse(sock, self.capacity)  # the one to evict finished its request meanwhile
                continue
            conn = _Conn()
            self._conns[conn] = None
            conn.task = asyncio.create_task(self._connection(sock, conn))
            await asyncio.sleep(0)  # let it read what already came before the next accept

    def _full_for(self) -> float | None:
        """0 when a connection can be accepted now; else seconds until the oldest connection still sending its
        request may lose its slot (None: none is sending, wait for a slot to free)."""
        if len(self._conns) < self.capacity:
            return 0.0
        oldest = next((c for c in self._conns if c.reading), None)
        return None if oldest is None else max(0.0, oldest.since + self.grace - time.monotonic())

    def _evict_oldest_reader(self) -> bool:
        oldest = next((c for c in self._conns if c.reading), None)
        if oldest is None:
            return False
        oldest.evicted = True
        del self._conns[oldest]  # its slot is the newcomer's now; its task answers 503 and closes
        assert oldest.task is not None
        oldest.task.cancel()
        return True

    async def _connection(self, sock: socket.socket, conn: _Conn) -> None:
        try:
            reader, writer = await asyncio.open_connection(sock=sock, limit=MAX_HEAD)
        except BaseException:
            sock.close()
            self._release(conn)
            raise
        answered = False
        try:
            status, payload = await self._answer(reader, conn)
            answered = True
            await self._write(writer, http_answer(status, payload))
            if status >= 400 and conn.reading:  # refused before its body was read: let it see the answer
                await _drain_input(reader)
        except asyncio.CancelledError:
            if not conn.evicted:
                raise
            if not answered:
                writer.write(http_answer(503, {"error": f"server busy: {self.capacity} connections open; retry"}))
        except (TimeoutError, OSError):
            pass
        finally:
            if writer.transport.get_write_buffer_size():
                writer.transport.abort()  # never hold a descriptor for a client that does not read
            else:
                writer.close()
            self._release(conn)

    def _release(self, conn: _Conn) -> None:
        if self._conns.pop(conn, 0) is None:  # still held (an evicted one gave its slot away already)
            self._changed.set()

    async def _write(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        """Send ``data``; a client that does not take it within ``read_timeout`` s is cut."""
        writer.write(data)
        try:
            async with asyncio.timeout(self.read_timeout):
                await writer.drain()
        except TimeoutError:
            log.warning("reward server: a client did not read its answer within %g s; cut", self.read_timeout)
            writer.transport.abort()

    async def _answer(self, reader: asyncio.StreamReader, conn: _Conn) -> tuple[int, dict[str, Any]]:
        """(status, JSON payload) for one request; the body is read only once it is allowed."""
        try:
            try:
                async with asyncio.timeout(self.read_timeout):
                    head = await reader.readuntil(b"\r\n\r\n")
            except TimeoutError:
                raise _BadRequest(408, f"request headers not received within {self.read_timeout:g} s") from None
            except asyncio.LimitOverrunError:
                raise _BadRequest(431, f"request line and headers exceed {MAX_HEAD} bytes") from None
            method, path, headers = parse_head(head)
            if path.rstrip("/") == "/health" and method in ("GET", "HEAD"):
                return 200, {"status": "ok", "reward": type(self.reward).__name__}
            if path.rstrip("/") != "/score" or method != "POST":
                return 404, {"error": f"no route {method} {path[:80]}; use POST /score or GET /health"}
            self._authorize(headers)
            body = await self._body(reader, self._content_length(headers))
            conn.reading = False  # the request is in: from here its slot is never taken
            return await asyncio.get_running_loop().run_in_executor(self._worker, self._score, body)
        except _BadRequest as err:
            return err.status, {"error": str(err)}
        except asyncio.IncompleteReadError as err:
            return 400, {"error": f"request ended after {len(err.partial)} bytes"}

    def _authorize(self, headers: dict[str, str]) -> None:
        if self.token is None:
            return
        sent = headers.get("authorization", "").encode("utf-8", "replace")
        if not hmac.compare_digest(sent, b"Bearer " + self.token.encode()):
            raise _BadRequest(401, "missing or wrong bearer token")

    def _content_length(self, headers: dict[str, str]) -> int:
        raw = headers.get("content-length")
        if raw is None:
            raise _BadRequest(411, "Content-Length required")
        if not raw.strip().isdigit():
            raise _BadRequest(400, f"malformed Content-Length {raw[:40]!r}")
        length = int(raw)
        if length > self.max_body:
            raise _BadRequest(413, f"request body of {length} bytes exceeds {self.max_body}; "
                                   "send smaller batches (RemoteReward batch_size)")
        return length

    async def _body(self, reader: asyncio.StreamReader, length: int) -> bytes:
        """The whole body within ``read_timeout`` seconds in total (408 otherwise)."""
        try:
            async with asyncio.timeout(self.read_timeout):
                return await reader.readexactly(length)
        except TimeoutError:
            raise _BadRequest(408, f"request body not received within {self.read_timeout:g} s") from None
        except asyncio.IncompleteReadError as err:
            raise _BadRequest(400, f"request body ended after {len(err.partial)} of {length} bytes") from None

    def _score(self, body: bytes) -> tuple[int, dict[str, Any]]:
        """Decode and score one request (in the worker thread): 200, 400 bad request or 500 the tree failed."""
        try:
            _check_containers(body, self.max_body // 16)
            payload = json.loads(body)
            del body
            _check_token_cells(payload, self.max_body // 4)
            samples: Samples = samples_from_payload(payload)
        except _BadRequest as err:
            return err.status, {"error": str(err)}
        except (ValueError, TypeError, AttributeError, RecursionError) as err:
            return 400, {"error": f"bad request: {err}"}
        try:
            with self.lock:
                out = self.reward(samples)
        except Exception as err:  # noqa: BLE001 - reported to the client, logged here
            log.exception("reward tree failed")
            return 500, {"error": f"{type(err).__name__}: {err}"}
        return 200, output_to_payload(out)


async def _drain_input(reader: asyncio.StreamReader, seconds: float = 1.0, quiet: float = 0.1) -> None:
    """After an early error answer, drop what the client still sends (for at most ``seconds``, until it is
    ``quiet`` that long), so that it reads the answer instead of a connection reset."""
    async with asyncio.timeout(seconds):
        while await asyncio.wait_for(reader.read(1 << 16), quiet):
            pass


def _refuse(sock: socket.socket, capacity: int) -> None:
    """Answer 503 at once and close (no slot to give: only in a race with :meth:`RewardServer._full_for`)."""
    sock.setblocking(False)
    try:
        sock.recv(1 << 16)  # what already came, so that the close is a FIN, not a reset that hides the answer
    except OSError:
        pass
    try:
        sock.send(http_answer(503, {"error": f"server busy: {capacity} connections open; retry"}))
    except OSError:
        pass
    sock.close()


def serve(reward: Reward, host: str = "127.0.0.1", port: int = 8000, token: str | None = None,
          max_body: int = MAX_BODY, read_timeout: float = 30.0, max_connections: int = MAX_CONNECTIONS) -> None:
    """Serve ``reward`` until interrupted (``port=0`` picks a free port; the URL is printed)."""
    server = RewardServer(reward, host, port, token, max_body, read_timeout, max_connections)
    auth = "bearer token required" if token else "NO authentication"
    held = f"at most {server.capacity} connections" + (" (fd limit)" if server.capacity < max_connections else "")
    print(f"serving {type(reward).__name__} on {server.url} (POST /score, GET /health; {auth}; {held})", flush=True)
    if token is None and host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serve-reward: %s is reachable beyond this machine WITHOUT authentication; set %s", host, TOKEN_ENV)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
