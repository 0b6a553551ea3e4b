"""``serve-reward`` under slow and many clients, measured as a new user would see it (loopback only).

Starts a real ``serve-reward`` process (RegexFormat 'ok', bearer token) under ``ulimit -n FD_LIMIT``,
then, at once: SLOW slowloris clients (a request line, then one header byte every 0.2 s, never the
blank line; with ``--reconnect`` each connects again when cut), SEQUENTIAL legitimate requests one after another and
CONCURRENT legitimate requests all opened together. A legitimate client retries as RemoteReward's
defaults do (2 retries of a 503, reset or timeout, after 0.5 s then 1 s; 60 s timeout). Prints one
JSON object: answered/right counts, each slow connection's lifetime (connect to cut) and how many
were held past their deadline (read timeout + 1 s) ``--held-at`` seconds after the start.

    python benchmarks/serve_attack.py --fd-limit 128 --read-timeout 5 --slow 150 --sequential 8 --concurrent 1000
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "tok-serve-attack"
SLOW_HEAD = b"POST /score HTTP/1.1\r\nHost: x\r\nX-Slow: "


@dataclass
class Tally:
    """What the clients saw. ``lives``: seconds from connect to the server's cut, per slow connection."""

    lives: list[float] = field(default_factory=list)
    open_since: dict[int, float] = field(default_factory=dict)
    held_at: int = -1
    right: int = 0
    wrong: list[str] = field(default_factory=list)
    attempts: int = 0


def start_server(fd_limit: int, read_timeout: float, extra: list[str], workdir: Path) -> tuple[subprocess.Popen, int]:
    """A serve-reward process with RLIMIT_NOFILE = ``fd_limit``; returns (process, port)."""
    config = workdir / "regex.yaml"
    config.write_text("class_path: reward_models.RegexFormat\ninit_args:\n  pattern: ok\n")
    env = {**os.environ, "TREPO_REWARD_TOKEN": TOKEN, "PYTHONPATH": str(ROOT)}

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (fd_limit, fd_limit))

    proc = subprocess.Popen([sys.executable, "-m", "reward_models.cli", "serve-reward", "--config", str(config),
                             "--port", "0", "--read-timeout", str(read_timeout), *extra], preexec_fn=limit,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT, env=env)
    line = proc.stdout.readline() if proc.stdout else ""
    if " on http://" not in line:
        proc.kill()
        raise RuntimeError(f"serve-reward did not start: {line!r}")
    return proc, int(line.split(" on http://")[1].split()[0].rsplit(":", 1)[1])


async def slow_client(port: int, stop: asyncio.Event, tally: Tally, key: int, reconnect: bool) -> None:
    """Slowloris: one header byte every 0.2 s; when the server cuts it, note the lifetime (and with ``reconnect``
    connect again 0.1 s later)."""
    first = True
    while not stop.is_set() and (first or reconnect):
        first = False
        start = time.monotonic()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.2)
            continue
        tally.open_since[key] = start
        cut = False
        try:
            writer.write(SLOW_HEAD)
            while not stop.is_set() and not cut:
                writer.write(b"a")
                await writer.drain()
                try:
                    cut = not await asyncio.wait_for(reader.read(4096), 0.2)
                    while not cut:  # an answer (408/503): read on to the close
                        cut = not await asyncio.wait_for(reader.read(4096), 1.0)
                except asyncio.TimeoutError:
                    pass
        except OSError:
            cut = True
        tally.open_since.pop(key, None)
        if cut:
            tally.lives.append(time.monotonic() - start)
        writer.close()
        await asyncio.sleep(0.1)


async def legit(port: int, i: int, tally: Tally, retries: int = 2, backoff: float = 0.5, timeout: float = 60) -> None:
    """One POST /score of ['ok i', 'no i'] (expects [1.0, 0.0]) with RemoteReward's retry policy."""
    body = json.dumps({"prompts": ["p", "p"], "completions": [f"ok {i}", f"no {i}"]}).encode()
    head = (f"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    why = ""
    for attempt in range(retries + 1):
        tally.attempts += 1
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(head + body)
                answer = await reader.read()
                writer.close()
            status = int(answer.split(b" ", 2)[1]) if answer else 0
            if status == 200 and json.loads(answer.split(b"\r\n\r\n", 1)[1])["rewards"] == [1.0, 0.0]:
                tally.right += 1
                return
            why = f"HTTP {status}: {answer[-120:]!r}"
            if status not in (502, 503, 504, 0):
                break
        except (OSError, TimeoutError) as err:
            why = f"{type(err).__name__}: {err}"
        if attempt < retries:
            await asyncio.sleep(backoff * 2**attempt)
    tally.wrong.append(f"request {i}: {why}")


async def attack(port: int, slow: int, sequential: int, concurrent: int, held_at: float,
                 read_timeout: float, reconnect: bool) -> dict[str, Any]:
    tally, stop = Tally(), asyncio.Event()
    start = time.monotonic()
    slow_tasks = [asyncio.create_task(slow_client(port, stop, tally, k, reconnect)) for k in range(slow)]
    await asyncio.sleep(0.5)  # the slow clients hold their connections first

    async def in_turn() -> None:
        for i in range(sequential):
            await legit(port, i, tally)

    async def note_held() -> None:
        await asyncio.sleep(max(0.0, held_at - (time.monotonic() - start)))
        now = time.monotonic()  # open past their header deadline (1 s of slack)
        tally.held_at = sum(1 for t in tally.open_since.values() if now - t > read_timeout + 1)

    noted = asyncio.create_task(note_held())
    await asyncio.gather(in_turn(), *(legit(port, sequential + i, tally) for i in range(concurrent)))
    legit_s = time.monotonic() - start - 0.5
    await noted
    stop.set()
    await asyncio.gather(*slow_tasks)
    lives = sorted(tally.lives)
    return {"legit": sequential + concurrent, "right": tally.right, "attempts": tally.attempts,
            "failed": tally.wrong[:5], "n_failed": len(tally.wrong), "legit_s": round(legit_s, 2),
            "slow_cut": len(lives), "slow_life_max_s": round(lives[-1], 2) if lives else None,
            "slow_life_median_s": round(lives[len(lives) // 2], 2) if lives else None,
            f"slow_held_past_deadline_at_{held_at:g}s": tally.held_at}


def run(fd_limit: int, read_timeout: float, slow: int, sequential: int, concurrent: int, held_at: float,
        reconnect: bool = False, extra: list[str] | None = None) -> dict[str, Any]:
    """Start the server, attack it, stop it; the figures plus whether the process survived."""
    with tempfile.TemporaryDirectory() as tmp:
        proc, port = start_server(fd_limit, read_timeout, extra or [], Path(tmp))
        try:
            figures = asyncio.run(attack(port, slow, sequential, concurrent, held_at, read_timeout, reconnect))
            figures["server_alive"] = proc.poll() is None
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fd-limit", type=int, default=128)
    parser.add_argument("--read-timeout", type=float, default=5.0)
    parser.add_argument("--slow", type=int, default=150)
    parser.add_argument("--sequential", type=int, default=8)
    parser.add_argument("--concurrent", type=int, default=1000)
    parser.add_argument("--held-at", type=float, default=8.0, help="count slow connections open this long")
    parser.add_argument("--reconnect", action="store_true", help="slow clients connect again when cut")
    args, extra = parser.parse_known_args()  # the rest goes to serve-reward, e.g. --max-connections 100
    resource.setrlimit(resource.RLIMIT_NOFILE, (4096, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    print(json.dumps(run(args.fd_limit, args.read_timeout, args.slow, args.sequential, args.concurrent,
                         args.held_at, args.reconnect, extra)))


if __name__ == "__main__":
    main()
