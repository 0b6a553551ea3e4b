"""A reward served over HTTP: :class:`RemoteReward` (the client); the server is :mod:`reward_models.server`
(:class:`RewardServer` and :func:`serve` are re-exported here).

Protocol (JSON, NaN sent as null):
``POST /score`` ``{"prompts", "completions", "metadata", "group_index", "completion_ids", "trainer_state"}`` →
200 ``{"rewards": [...], "metrics": {key: [...]}}``; 400 ``{"error"}`` for a bad request;
500 ``{"error"}`` when the reward tree fails; 503 when the server is full (retried here).
``GET /health`` → ``{"status": "ok", "reward": name}``.
"""
from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from typing import Any

import torch

from reward_models.base import OnError, Reward
from reward_models.rollouts import output_from_payload, samples_to_payload
from reward_models.server import MAX_BODY, MAX_CONNECTIONS, TOKEN_ENV, RewardServer, serve
from reward_models.types import RewardOutput, Samples

RETRY_STATUS = {502, 503, 504}
__all__ = ["MAX_BODY", "MAX_CONNECTIONS", "TOKEN_ENV", "RemoteReward", "RewardServer", "group_chunks", "serve"]


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
