#!/usr/bin/env python3
"""Runs a built kvsched image without Docker and checks what it serves (.ci/build-image.sh).

`buildah run --isolation chroot --network host` starts the image's own ENTRYPOINT + CMD (read from
the image, not restated here) on a free port, then, from this machine: /ready and /health answer
200, a streamed chat completion arrives as SSE chunks with text and ends with `data: [DONE]`,
/metrics is Prometheus text that counted that request, the process listening on the port and all
its children run as uid/gid 10001 (read from /proc, not from the image config), and the image's
HEALTHCHECK command succeeds inside the container. The server's whole process group is stopped,
and the working container removed, whatever happens. Standard library only: it runs before the
project is installed. Exit status 1 with one `check-image: ...` line per failure.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

EXPECTED_UID = 10001
BUILDAH_OWN = ("buildah", "buildah-chroot-runtime")  # the runtime's processes, root on the host


class CheckFailed(Exception):
    pass


def buildah(*args: str, timeout_s: float = 120) -> str:
    done = subprocess.run(
        ["buildah", *args], capture_output=True, text=True, timeout=timeout_s, check=False
    )
    if done.returncode != 0:
        raise CheckFailed(f"buildah {' '.join(args[:2])} failed: {done.stderr.strip()[-800:]}")
    return done.stdout


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def http(
    url: str, body: dict[str, Any] | None = None, timeout_s: float = 10
) -> tuple[int, str, str]:
    """(status, content type, body text); HTTP errors are returned, not raised."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return (
                response.status,
                response.headers.get("content-type", ""),
                response.read().decode(),
            )
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("content-type", ""), error.read().decode()


def image_config(image: str) -> dict[str, Any]:
    info = json.loads(buildah("inspect", "--type", "image", image))
    config = dict(info["OCIv1"]["config"])
    config["Healthcheck"] = (info.get("Docker") or {}).get("config", {}).get("Healthcheck")
    return config


def proc_status(pid: int) -> dict[str, str]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def proc_cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()


def group_processes(pgid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) == pgid:
                    pids.append(int(entry.name))
            except ProcessLookupError:
                pass
    return sorted(pids)


def listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # 0A = LISTEN
                inodes.add(inode)
    return inodes


def listener_pid(pids: list[int], port: int) -> int:
    inodes = {f"socket:[{inode}]" for inode in listening_inodes(port)}
    for pid in pids:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except (FileNotFoundError, PermissionError):
            continue
        for fd in fds:
            try:
                if os.readlink(fd) in inodes:
                    return pid
            except OSError:
                continue
    raise CheckFailed(f"no process of the container listens on port {port}")


def descendants(root: int, pids: list[int]) -> list[int]:
    parent = {pid: int(proc_status(pid)["PPid"]) for pid in pids if Path(f"/proc/{pid}").exists()}
    tree, grew = {root}, True
    while grew:
        new = {pid for pid, ppid in parent.items() if ppid in tree} - tree
        tree |= new
        grew = bool(new)
    return sorted(tree)


def read_sse(url: str, body: dict[str, Any], timeout_s: float = 60) -> dict[str, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    events: list[str] = []
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        content_type = response.headers.get("content-type", "")
        for raw in response:
            line = raw.decode().rstrip("\r\n")
            if line.startswith("data:"):
                events.append(line[len("data:") :].strip())
    chunks = [json.loads(event) for event in events if event != "[DONE]"]
    deltas = [c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices")]
    finish = [c["choices"][0].get("finish_reason") for c in chunks if c.get("choices")]
    return {
        "content_type": content_type,
        "events": len(events),
        "done_last": bool(events) and events[-1] == "[DONE]",
        "done_count": events.count("[DONE]"),
        "chunks_with_text": sum(1 for d in deltas if d),
        "content": "".join(deltas),
        "finish_reason": next((f for f in reversed(finish) if f), None),
        "object": sorted({c.get("object") for c in chunks}),
    }


def metric_sum(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


class Server:
    """`buildah run` of the image's entrypoint in a working container, in its own session."""

    def __init__(self, image: str, port: int, log: Path) -> None:
        self.image, self.port, self.log = image, port, log
        self.container = f"kvsched-check-{os.getpid()}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, command: list[str]) -> None:
        buildah("from", "--pull=never", "--name", self.container, self.image)
        run = ["buildah", "run", "--isolation", "chroot", "--network", "host"]
        run += ["--env", f"KVSCHED_PORT={self.port}", self.container, "--", *command]
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                run, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def exec(self, command: list[str], timeout_s: float = 30) -> int:
        run = ["buildah", "run", "--isolation", "chroot", "--network", "host"]
        run += ["--env", f"KVSCHED_PORT={self.port}", self.container, "--", *command]
        return subprocess.run(run, capture_output=True, timeout=timeout_s, check=False).returncode

    def log_tail(self, lines: int = 25) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> list[str]:
        """SIGTERM to the group, SIGKILL after 20 s; what was still alive is returned."""
        left: list[str] = []
        if self.process is not None:
            pgid = self.process.pid
            try:
                os.killpg(pgid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + 20
            while group_processes(pgid) and time.monotonic() < deadline:
                self.process.poll()
                time.sleep(0.2)
            left = [f"{pid} {proc_cmdline(pid)}" for pid in group_processes(pgid)]
            if left:
                os.killpg(pgid, signal.SIGKILL)
            self.process.wait(timeout=10)
        subprocess.run(["buildah", "rm", self.container], capture_output=True, check=False)
        return left


def wait_ready(server: Server, base: str, timeout_s: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        assert server.process is not None
        if server.process.poll() is not None:
            raise CheckFailed(
                f"the server exited with status {server.process.returncode} before /ready "
                f"answered 200; its output:\n{server.log_tail()}"
            )
        try:
            status, _, _ = http(f"{base}/ready", timeout_s=2)
            if status == 200:
                return time.monotonic() - start
        except OSError:
            pass
        time.sleep(0.5)
    raise CheckFailed(f"/ready did not answer 200 within {timeout_s:.0f} s:\n{server.log_tail()}")


def check(image: str, server: Server, ready_timeout_s: float, report: dict[str, Any]) -> None:
    """Fills `report` as it goes (so a failure keeps what was seen) and its `failures`."""
    report["port"] = server.port
    failures: list[str] = report.setdefault("failures", [])

    def expect(ok: bool, message: str) -> None:
        if not ok:
            failures.append(message)

    config = image_config(image)
    command = [*(config.get("Entrypoint") or []), *(config.get("Cmd") or [])]
    report["config"] = {k: config.get(k) for k in ("User", "Entrypoint", "Cmd", "WorkingDir")}
    expect(command == ["kvsched", "serve"], f"image command is {command}, not kvsched serve")
    expect(
        config.get("User") == f"{EXPECTED_UID}:{EXPECTED_UID}",
        f"image USER is {config.get('User')!r}, not {EXPECTED_UID}:{EXPECTED_UID}",
    )
    healthcheck = (config.get("Healthcheck") or {}).get("Test") or []
    expect(healthcheck[:1] == ["CMD"], f"no exec-form HEALTHCHECK in the image: {healthcheck}")

    server.start(command)
    base = f"http://127.0.0.1:{server.port}"
    report["ready_after_s"] = round(wait_ready(server, base, ready_timeout_s), 2)

    status, _, body = http(f"{base}/ready")
    report["ready"] = {"status": status, "body": body}
    expect(status == 200 and json.loads(body).get("ready") is True, f"/ready: {status} {body}")
    status, _, body = http(f"{base}/health")
    report["health"] = {"status": status}
    expect(status == 200, f"/health: {status} {body}")
    status, _, body = http(f"{base}/v1/models")
    models = [m["id"] for m in json.loads(body)["data"]] if status == 200 else []
    report["models"] = models
    expect(bool(models), f"/v1/models: {status} {body[:200]}")

    chat = read_sse(
        f"{base}/v1/chat/completions",
        {
            "model": models[0] if models else "kvsched-sim",
            "messages": [{"role": "user", "content": "Say hello from inside the image."}],
            "max_tokens": 12,
            "stream": True,
        },
    )
    report["chat"] = chat
    expect(chat["content_type"].startswith("text/event-stream"), f"SSE type {chat['content_type']}")
    expect(chat["done_last"] and chat["done_count"] == 1, "the stream does not end with one [DONE]")
    expect(chat["chunks_with_text"] >= 1 and chat["content"].strip() != "", "no text streamed")
    expect(chat["object"] == ["chat.completion.chunk"], f"chunk objects {chat['object']}")
    expect(chat["finish_reason"] in ("stop", "length"), f"finish_reason {chat['finish_reason']}")

    status, content_type, metrics = http(f"{base}/metrics")
    series = [line for line in metrics.splitlines() if line.startswith("kvsched:")]
    success = metric_sum(metrics, "kvsched:request_success_total")
    report["metrics"] = {
        "status": status,
        "content_type": content_type,
        "kvsched_samples": len(series),
        "request_success_total": success,
    }
    expect(
        status == 200 and content_type.startswith("text/plain"),
        f"/metrics: {status} {content_type}",
    )
    expect(len(series) > 0, "/metrics has no kvsched: samples")
    expect(success >= 1, f"/metrics counted {success} finished requests after the chat request")

    assert server.process is not None
    pids = group_processes(server.process.pid)
    listener = listener_pid(pids, server.port)
    tree = descendants(listener, pids)
    processes: list[dict[str, Any]] = []
    for pid in tree:
        status_fields = proc_status(pid)
        processes.append(
            {
                "pid": pid,
                "uid": status_fields["Uid"].split(),
                "gid": status_fields["Gid"].split(),
                "cmd": proc_cmdline(pid)[:120],
            }
        )
    report["listener_pid"] = listener
    report["processes"] = processes
    expect("kvsched serve" in proc_cmdline(listener), f"listener is {proc_cmdline(listener)!r}")
    for proc in processes:
        ids = {int(x) for x in proc["uid"] + proc["gid"]}
        expect(
            ids == {EXPECTED_UID}, f"pid {proc['pid']} runs as uid/gid {proc['uid']}/{proc['gid']}"
        )
    others = [pid for pid in pids if pid not in tree]
    report["runtime_processes"] = [proc_cmdline(pid).split()[0] for pid in others]
    expect(
        all(
            proc_cmdline(pid).split()[0] in BUILDAH_OWN
            or "buildah-chroot-exec" in proc_cmdline(pid)
            for pid in others
        ),
        f"unexpected processes in the group: {[proc_cmdline(p) for p in others]}",
    )

    report["healthcheck_rc"] = server.exec(healthcheck[1:]) if healthcheck[1:] else None
    expect(
        report["healthcheck_rc"] == 0, f"the image's HEALTHCHECK exited {report['healthcheck_rc']}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image")
    parser.add_argument("--report", type=Path, help="write what was checked here, as JSON")
    parser.add_argument("--ready-timeout-s", type=float, default=120)
    args = parser.parse_args()

    def on_signal(signum: int, _frame: object) -> None:
        raise SystemExit(f"check-image: stopped by signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with tempfile.TemporaryDirectory(prefix="kvsched-check-") as tmp:
        server = Server(args.image, free_port(), Path(tmp) / "serve.log")
        started = time.monotonic()
        report: dict[str, Any] = {"image": args.image, "failures": []}
        try:
            check(args.image, server, args.ready_timeout_s, report)
        except CheckFailed as error:
            report["failures"].append(str(error))
        except (OSError, ValueError, KeyError, subprocess.TimeoutExpired) as error:
            report["failures"].append(f"{type(error).__name__}: {error}\n{server.log_tail()}")
        finally:
            left = server.stop()
            if left:
                report["failures"].append(f"killed after SIGTERM + 20 s: {left}")
            report["stopped"] = not group_processes(server.process.pid) if server.process else True
            report["elapsed_s"] = round(time.monotonic() - started, 1)
            if args.report:
                args.report.write_text(json.dumps(report, indent=1) + "\n")
    for failure in report["failures"]:
        sys.stderr.write(f"check-image: {failure}\n")
    if report["failures"]:
        return 1
    chat = report["chat"]
    sys.stdout.write(
        f"check-image: {args.image} served: /ready after {report['ready_after_s']} s, "
        f"{chat['chunks_with_text']} SSE chunks ({chat['content'].strip()[:40]!r}...) then [DONE], "
        f"/metrics {report['metrics']['kvsched_samples']} kvsched: samples, "
        f"{len(report['processes'])} processes as uid {EXPECTED_UID}, HEALTHCHECK ok\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
