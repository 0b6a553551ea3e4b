"""RemoteReward against the stdlib server over loopback (port 0 = a free port)."""
import json
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from rm_helpers import Const, assert_close, nan, samples

from reward_models import Gate, Normalize, NumericAnswer, RewardError, TagFormat, WeightedSum
from reward_models.remote import RemoteReward, group_chunks

EPS = 1e-6


def test_group_chunks_never_split_groups():
    assert group_chunks([0, 0, 1, 1, 1, 2], 3) == [[0, 1], [2, 3, 4], [5]]
    assert group_chunks([0, 0, 0], 2) == [[0, 1, 2]]  # an oversized group stays whole
    assert group_chunks([], 4) == []


def test_remote_equals_local(server):
    tree = WeightedSum({"correct": Gate(TagFormat(tags=["answer"]), NumericAnswer()),
                        "norm": Normalize(NumericAnswer(), mode="group")})
    srv = server(tree)
    s = samples(["<answer>4</answer>", "4", "<answer>5</answer>", "<answer>4</answer>"], [{"answer": 4}] * 4,
                group_index=[0, 0, 1, 1])
    local = tree(s)
    remote = RemoteReward(srv.url, batch_size=2)(s)  # two requests of one whole group each
    assert_close(remote.rewards, local.rewards.tolist())
    assert set(remote.metrics) == set(local.metrics)
    # group 0: raw [1, 1] -> 0, 0; group 1: raw [0, 1] -> mean .5, std .5 -> -1, 1 (over eps)
    assert_close(remote.metrics["norm"], [0, 0, -0.5 / (0.5 + EPS), 0.5 / (0.5 + EPS)])


def test_remote_nan_travels_as_null(server):
    srv = server(Const([1.0, nan]))
    s = samples(["a", "b"], [{"i": 0}, {"i": 1}])
    assert_close(RemoteReward(srv.url)(s).rewards, [1, nan])
    with urllib.request.urlopen(f"{srv.url}/health", timeout=5) as r:
        assert json.loads(r.read()) == {"status": "ok", "reward": "Const"}


def test_remote_token_ids_travel(server):
    from reward_models import OverlongPenalty

    srv = server(OverlongPenalty(max_length=10, buffer_length=4))
    s = samples(["x", "y"])
    s.completion_ids = torch.tensor([[5, 6, 7, 8, 9, 1, 2, 0], [1, 0, 0, 0, 0, 0, 0, 0]])
    s.completion_mask = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 0], [1, 0, 0, 0, 0, 0, 0, 0]])
    # token lengths 7 and 1 reach the server: (6 - 7) / 4 and 0
    assert_close(RemoteReward(srv.url)(s).rewards, [-0.25, 0])


def test_server_error_is_reported_with_its_message(server):
    srv = server(NumericAnswer())
    with pytest.raises(RewardError, match=r"HTTP 500: RewardError: .*row 0 has no 'answer'"):
        RemoteReward(srv.url, retries=0)(samples(["4"]))
    out = RemoteReward(srv.url, on_error="nan")(samples(["4"]))
    assert_close(out.rewards, [nan]) and assert_close(out.metrics["failed"], [1])


def test_bad_request_is_400(server):
    srv = server(NumericAnswer())
    req = urllib.request.Request(f"{srv.url}/score", data=b'{"prompts": 1}', method="POST")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=5)
    assert info.value.code == 400 and "prompts" in json.loads(info.value.read())["error"]


def test_unreachable_server_retries_then_fails():
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    start = time.perf_counter()
    with pytest.raises(RewardError, match=r"unreachable after 3 attempts"):
        RemoteReward(f"http://127.0.0.1:{port}", retries=2, backoff=0.05)(samples(["a"]))
    assert 0.15 <= time.perf_counter() - start < 3  # backoff 0.05 + 0.1


def test_transient_503_is_retried():
    calls = []

    class Flaky(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            self.rfile.read(int(self.headers["Content-Length"]))
            calls.append(1)
            status, body = (
                (503, b'{"error": "busy"}') if len(calls) == 1 else (200, b'{"rewards": [0.5], "metrics": {}}')
            )
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        out = RemoteReward(f"http://127.0.0.1:{srv.server_address[1]}", backoff=0.01)(samples(["a"]))
        assert_close(out.rewards, [0.5]) and len(calls) == 2
    finally:
        srv.shutdown()
        srv.server_close()


def test_timeout_is_enforced(server):
    class Slow(Const):
        def forward(self, s):
            time.sleep(1.0)
            return super().forward(s)

    srv = server(Slow([1.0]))
    start = time.perf_counter()
    with pytest.raises(RewardError, match="unreachable after 1 attempts"):
        RemoteReward(srv.url, timeout=0.2, retries=0)(samples(["a"], [{"i": 0}]))
    assert time.perf_counter() - start < 0.9
