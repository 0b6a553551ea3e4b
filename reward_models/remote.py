"""A reward served over HTTP: :class:`RemoteReward` (client) and :func:`serve` (stdlib server).

Protocol (JSON, NaN sent as null):
``POST /score`` ``{"prompts", "completions", "metadata", "group_index", "completion_ids", "trainer_state"}`` →
200 ``{"rewards": [...], "metrics": {key: [...]}}``; 400 ``{"error"}`` for a bad request;
500 ``{"error"}`` when the reward tree fails. ``GET /health`` → ``{"status": "ok", "reward": name}``.
"""
from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

import torch

from reward_models.base import Reward
from reward_models.rollouts import output_from_payload, output_to_payload, samples_from_payload, samples_to_payload
from reward_models.types import RewardOutput, Samples

log = logging.getLogger("reward_models")
MAX_BODY = 256 << 20
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
        on_error: Literal["raise", "nan"] = "raise",
    ) -> None:
        """
        Args:
            url: server base URL, e.g. ``http://rm-host:8000``.
            timeout: seconds per HTTP request.
            retries: extra attempts after a transient failure.
            batch_size: rows per request (groups are never split).
            backoff: first retry delay in seconds (doubles each retry).
            headers: extra HTTP headers (e.g. an auth token).
            on_error: ``"raise"`` or ``"nan"`` (NaN + ``failed``) when the server cannot score.
        """
        if retries < 0 or batch_size < 1 or timeout <= 0:
            raise ValueError("RemoteReward: need retries >= 0, batch_size >= 1, timeout > 0")
        self.url, self.request_timeout, self.retries = url.rstrip("/"), float(timeout), int(retries)
        self.batch_size, self.backoff, self.headers = int(batch_size), float(backoff), dict(headers or {})
        self.set_policy(on_error, None)

    def _post(self, body: bytes) -> dict[str, Any]:
        request = urllib.request.Request(f"{self.url}/score", data=body, method="POST",
                                         headers={"Content-Type": "application/json", **self.headers})
        for attempt in range(self.retries + 1):
            try:
                with urllib.request.urlopen(request, timeout=self.request_timeout) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as err:
                message = _error_text(err)
                if err.code not in RETRY_STATUS or attempt == self.retries:
                    raise RuntimeError(f"reward server {self.url} answered HTTP {err.code}: {message}") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
                if attempt == self.retries:
                    raise ConnectionError(f"reward server {self.url} unreachable after {attempt + 1} attempts: {err}") from err
            time.sleep(self.backoff * 2**attempt)
        raise AssertionError("unreachable")

    def forward(self, samples: Samples) -> RewardOutput:
        n = len(samples)
        rewards = torch.full((n,), float("nan"))
        metrics: dict[str, torch.Tensor] = {}
        groups = samples.group_index.tolist() if samples.group_index is not None else list(range(n))
        for rows in group_chunks(groups, self.batch_size):
            part = samples.select(rows)
            body = json.dumps(samples_to_payload(part), default=str).encode()
            out = output_from_payload(self._post(body), len(rows))
            index = torch.tensor(rows, dtype=torch.long)
            rewards[index] = out.rewards
            for key, value in out.metrics.items():
                metrics.setdefault(key, torch.full((n,), float("nan")))[index] = value
        return RewardOutput(rewards, metrics)


def _error_text(err: urllib.error.HTTPError) -> str:
    try:
        return json.loads(err.read()).get("error", "")
    except Exception:  # noqa: BLE001 - any unreadable body
        return err.reason or ""


class _Handler(BaseHTTPRequestHandler):
    server: "RewardServer"

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

    def do_POST(self) -> None:  # noqa: N802
        if self.path.rstrip("/") != "/score":
            self._send(404, {"error": f"no route {self.path}; use POST /score"})
            return
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self._send(413, {"error": f"request body of {length} bytes exceeds {MAX_BODY}"})
            return
        try:
            samples = samples_from_payload(json.loads(self.rfile.read(length)))
        except (ValueError, TypeError, AttributeError) as err:
            self._send(400, {"error": f"bad request: {err}"})
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
    """HTTP server holding a reward tree; calls are serialised by a lock (trees may hold state)."""

    daemon_threads = True

    def __init__(self, reward: Reward, host: str = "127.0.0.1", port: int = 8000) -> None:
        super().__init__((host, port), _Handler)
        self.reward, self.lock = reward, threading.Lock()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("reward server: error while handling a request from %s", client_address)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


def serve(reward: Reward, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve ``reward`` until interrupted (``port=0`` picks a free port; the URL is printed)."""
    server = RewardServer(reward, host, port)
    print(f"serving {type(reward).__name__} on {server.url} (POST /score, GET /health)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
