"""Fixtures shared by the reward-layer tests."""
from __future__ import annotations

import threading

import pytest

from reward_models.remote import RewardServer


@pytest.fixture
def server():
    """``server(reward, **options)`` starts a RewardServer on a free local port; all are shut down after the test."""
    running = []

    def start(reward, **kwargs):
        srv = RewardServer(reward, "127.0.0.1", 0, **kwargs)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        running.append(srv)
        return srv

    yield start
    for srv in running:
        srv.shutdown()
        srv.server_close()
