"""serve-reward facing a network: authentication, bounded bodies, read timeouts, malformed headers, load."""
import json
import socket
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from rm_helpers import assert_close, samples

from reward_models import Reward, RewardError, RewardOutput
from reward_models.remote import TOKEN_ENV, RemoteReward, RewardServer


class Echo(Reward):
    """Scores each sample with its metadata ``x`` (so a mixed-up answer would show)."""

    deduplicate = False

    def forward(self, s):
        return RewardOutput(torch.tensor([float(m["x"]) for m in s.metadata]))


def raw(srv, head: bytes, body: bytes = b"", wait: float = 5.0) -> tuple[int, str]:
    """Send raw bytes; return (status, body) of the answer, (0, "") if the server closed without one."""
    with socket.create_connection(srv.server_address[:2], timeout=wait) as sock:
        sock.sendall(head + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    if not data:
        return 0, ""
    status = int(data.split(b" ", 2)[1])
    return status, data.split(b"\r\n\r\n", 1)[1].decode()


def post_head(length: str | None, extra: str = "") -> bytes:
    cl = "" if length is None else f"Content-Length: {length}\r\n"
    return f"POST /score HTTP/1.1\r\nHost: x\r\n{cl}{extra}\r\n".encode()


def healthy(srv) -> bool:
    with urllib.request.urlopen(f"{srv.url}/health", timeout=5) as r:
        return r.status == 200


def test_bearer_token_is_required_and_sent_by_remote_reward(server, monkeypatch):
    srv = server(Echo(), token="s3cret-token")
    s = samples(["a", "b"], [{"x": 1}, {"x": 2}])
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with pytest.raises(RewardError, match=rf"HTTP 401: missing or wrong bearer token \(set {TOKEN_ENV}"):
        RemoteReward(srv.url, retries=0)(s)
    monkeypatch.setenv(TOKEN_ENV, "s3cret-tokeX")
    with pytest.raises(RewardError, match="HTTP 401"):
        RemoteReward(srv.url, retries=0)(s)
    monkeypatch.setenv(TOKEN_ENV, "s3cret-token")
    assert_close(RemoteReward(srv.url)(s).rewards, [1, 2])
    assert RemoteReward(srv.url, token_env=None)._auth_headers() == {}  # opting out sends nothing
    assert healthy(srv)  # /health stays open (load balancers); it reveals only the root's class name


def test_empty_token_is_refused():
    with pytest.raises(ValueError, match="token must not be empty"):
        RewardServer(Echo(), "127.0.0.1", 0, token="")


@pytest.mark.parametrize("length, status", [("abc", 400), ("-5", 400), ("1e9", 400), (None, 411), ("10000001", 413)])
def test_bad_content_length_is_answered_before_reading(server, length, status):
    srv = server(Echo(), max_body=10_000_000)
    start = time.perf_counter()
    code, body = raw(srv, post_head(length))  # no body follows: an answer means nothing was awaited
    assert code == status and "error" in json.loads(body)
    assert time.perf_counter() - start < 2.5 and healthy(srv)


def test_oversized_body_gets_413_not_a_reset(server):
    srv = server(Echo(), max_body=1000)
    s = samples(["x" * 3000], [{"x": 1}])  # ~3 KB body: the client is still sending when the answer comes
    with pytest.raises(RewardError, match="HTTP 413: request body of .* exceeds 1000"):
        RemoteReward(srv.url, retries=0)(s)
    assert healthy(srv)


def test_stalled_client_is_cut_off_by_the_read_timeout(server):
    srv = server(Echo(), read_timeout=0.3)
    start = time.perf_counter()
    code, body = raw(srv, post_head("100"), b'{"prompts": ')  # 12 of 100 bytes, then silence
    assert code == 408 and "not received" in json.loads(body)["error"]
    code, _ = raw(srv, b"POST /score HTTP/1.1\r\n")  # headers never finish: closed without an answer
    assert code in (0, 408) and time.perf_counter() - start < 2.0 and healthy(srv)


def test_padding_blowup_is_refused(server):
    srv = server(Echo(), max_body=4000)  # at most 4000 // 4 = 1000 padded token cells
    payload = {"prompts": ["p"] * 60, "completions": ["c"] * 60, "completion_ids": [[1] * 30] + [[1]] * 59}
    code, body = raw(srv, post_head(str(len(json.dumps(payload)))), json.dumps(payload).encode())
    assert code == 400 and "60 x 30 tokens" in json.loads(body)["error"]  # 1800 cells > 1000


def test_container_blowup_is_refused(server):
    srv = server(Echo(), max_body=4000)  # at most 4000 // 16 = 250 JSON arrays/objects
    payload = json.dumps({"prompts": ["p"], "completions": ["c"], "metadata": [{"x": [[]] * 300}]}).encode()
    code, body = raw(srv, post_head(str(len(payload))), payload)
    # 300 inner lists + the list holding them + the metadata object and list + 2 columns + the root = 306
    assert code == 400 and "up to 306 JSON arrays/objects" in json.loads(body)["error"]


@pytest.mark.parametrize("payload, message", [
    ({"prompts": ["p"], "completions": [1]}, "'completions' item 0: must be a string"),
    ({"prompts": ["p"], "completions": ["c"], "group_index": [True]}, "'group_index' item 0: must be an int"),
    ({"prompts": ["p"], "completions": ["c"], "completion_ids": [[1, "2"]]}, "'completion_ids' item 0"),
    ([1, 2], "must be a JSON object"),
])
def test_wrong_schema_names_field_and_item(server, payload, message):
    srv = server(Echo())
    body = json.dumps(payload).encode()
    code, answer = raw(srv, post_head(str(len(body))), body)
    assert code == 400 and message in json.loads(answer)["error"]


def test_load_16_threads_200_requests_none_lost_or_wrong(server):
    srv = server(Echo())
    assert srv.request_queue_size == 1024  # waiting connections queue in the kernel, not in descriptors
    client = RemoteReward(srv.url, retries=0, timeout=10)

    def one(i: int) -> list[float]:
        return client(samples([f"c{i}", f"d{i}"], [{"x": i}, {"x": -i}])).rewards.tolist()

    start = time.perf_counter()
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(one, range(200)))
    assert answers == [[float(i), float(-i)] for i in range(200)]
    assert time.perf_counter() - start < 10


def test_oversized_headers_get_431(server):
    srv = server(Echo())
    # 70 KB of headers > MAX_HEAD (64 KiB): refused once the buffer passes the limit, before any blank line
    code, body = raw(srv, b"POST /score HTTP/1.1\r\n" + b"X-Pad: " + b"a" * 70_000 + b"\r\n")
    assert code == 431 and "exceed 65536 bytes" in json.loads(body)["error"]
    assert healthy(srv)

