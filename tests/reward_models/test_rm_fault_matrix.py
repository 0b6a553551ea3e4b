"""Fault injection: each row a broken reward (or server, or rollout file) and the outcome it must have.

Tree under test: ``WeightedSum({"good": Const([1, 2]), "bad": <faulty leaf>})``.
- ``on_error="raise"``: a RewardError naming the path ``bad`` and the fault;
- ``on_error="nan"``: training goes on: ``bad`` is NaN, ``bad/failed`` is 1, a warning is logged, and the
  total is the weighted sum over what applies, i.e. ``good`` alone = [1, 2];
- a NaN result is not a fault ("does not apply"): ``bad/failed`` stays 0.
"""
import json
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from rm_helpers import Const, assert_close, indexed, nan, samples

from reward_models import FunctionReward, RewardError, WeightedSum
from reward_models.cli import score_main
from reward_models.remote import RemoteReward

FAULTS = {  # function in rm_faults -> what the error must say
    "raises": "ValueError: fault: scorer crashed",
    "inf": "infinite rewards at samples \\[0, 1\\]",
    "one_too_many": "returned 3 values for 2 samples",
    "strings": "returned text 'good' at sample 0",
    "numeric_strings": "returned text '1.5' at sample 0",
    "hangs": "TimeoutError: timed out after 0.2 s",
}


def tree(fault: str, policy: str) -> WeightedSum:
    bad = FunctionReward(f"rm_faults.{fault}", on_error=policy, timeout=0.2)
    return WeightedSum({"good": Const([1.0, 2.0]), "bad": bad})


@pytest.mark.parametrize("fault", FAULTS)
def test_fault_under_raise_names_the_path(fault):
    start = time.perf_counter()
    with pytest.raises(
        RewardError,
        match=rf"reward component 'bad' \(FunctionReward\(rm_faults\.{fault}\)\) failed: .*" + FAULTS[fault],
    ) as info:
        tree(fault, "raise")(indexed(2))
    assert info.value.path == ("bad",)
    assert time.perf_counter() - start < 1.5  # the hang is cut at 0.2 s


@pytest.mark.parametrize("fault", FAULTS)
def test_fault_under_nan_trains_on_and_logs(fault, caplog):
    with caplog.at_level(logging.WARNING, "reward_models"):
        out = tree(fault, "nan")(indexed(2))
    assert_close(out.metrics["bad"], [nan, nan])
    assert_close(out.metrics["bad/failed"], [1, 1])
    assert_close(out.rewards, [1, 2])  # the sum over the components that apply
    assert f"reward component FunctionReward(rm_faults.{fault}) failed, scoring NaN" in caplog.text


@pytest.mark.parametrize("policy", ["raise", "nan"])
def test_nan_result_is_not_a_fault(policy):
    out = tree("nan", policy)(indexed(2))
    assert_close(out.rewards, [1, 2]) and assert_close(out.metrics["bad"], [nan, nan])
    if policy == "nan":
        assert_close(out.metrics["bad/failed"], [0, 0])


class _Garbage(BaseHTTPRequestHandler):
    """A reward server that answers 200 with whatever ``body`` the test chose."""

    body = b""

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


def _dead_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


REMOTE = {  # server behaviour -> (answer body or None for "down"/"slow", what the error must say)
    "down": (None, "unreachable after 1 attempts"),
    "slow": (b"SLOW", "unreachable after 1 attempts"),
    "not json": (b"<html>oops</html>", "JSONDecodeError"),
    "wrong count": (b'{"rewards": [1.0]}', "'rewards' must be a list of 2 numbers"),
    "text rewards": (b'{"rewards": ["a", "b"]}', "could not convert string to float"),
    "not an object": (b"[1, 2]", "AttributeError|must be"),
}


@pytest.fixture
def remote_url(request):
    body, _ = REMOTE[request.param]
    if body is None:
        yield _dead_url()
        return
    handler = type("H", (_Garbage,), {"body": body})
    if body == b"SLOW":
        handler.do_POST = lambda self: time.sleep(1.0)
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


@pytest.mark.parametrize("remote_url", list(REMOTE), indirect=True)
@pytest.mark.parametrize("policy", ["raise", "nan"])
def test_remote_faults(remote_url, policy, request):
    fault = request.node.callspec.params["remote_url"]
    reward = RemoteReward(remote_url, timeout=0.3, retries=0, on_error=policy)
    s = samples(["a", "b"])
    if policy == "raise":
        with pytest.raises(RewardError, match=r"\(RemoteReward\) failed: .*(" + REMOTE[fault][1] + ")"):
            reward(s)
    else:
        out = reward(s)
        assert_close(out.rewards, [nan, nan]) and assert_close(out.metrics["failed"], [1, 1])


def test_score_reports_each_bad_line_and_scores_the_rest(tmp_path, capsys):
    good = [{"prompt": "q", "completion": c, "metadata": {"answer": 4}} for c in ["4", "5"]]
    lines = [json.dumps(good[0]), "{not json", json.dumps({"prompt": "q"}), "[1, 2]", json.dumps(good[1]),
             json.dumps({"prompt": "q", "completion": "4", "metadata": "x"})]
    rollouts = tmp_path / "r.jsonl"
    rollouts.write_text("\n".join(lines) + "\n")
    tree_yaml = tmp_path / "t.yaml"
    tree_yaml.write_text("class_path: reward_models.NumericAnswer\n")
    assert score_main(["--rollouts", str(rollouts), "--reward", str(tree_yaml), "--json"]) == 0
    captured = capsys.readouterr()
    # lines 2, 3, 4 and 6 are bad, each reported with its line; lines 1 and 5 score [1, 0] -> mean 0.5
    for lineno, reason in [(2, "invalid JSON"), (3, "'completion' must be a string"), (4, "must be a JSON object"),
                           (6, "'metadata' must be an object")]:
        assert f"skipped {rollouts}:{lineno}: " in captured.err and reason in captured.err
    assert captured.err.count("skipped ") == 4
    table = {r["component"]: r for r in json.loads(captured.out)}
    assert table["total"]["mean"] == pytest.approx(0.5)
    with pytest.raises(SystemExit) as info:  # --strict stops at the first
        score_main(["--rollouts", str(rollouts), "--reward", str(tree_yaml), "--strict"])
    assert info.value.code == 2 and f"{rollouts}:2: invalid JSON" in capsys.readouterr().err
