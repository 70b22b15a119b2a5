"""The upload sink every tool sends to, always on 127.0.0.1.

Preferred: Debian's nginx (installed with apt-get when missing and we are root), which reads every
request body in full (echo module's ``echo_read_request_body``, or a proxy hop that does not forward
the body) before it answers ``202 {"id":"job-bench"}``: a sink that answered before reading would
let curl skip the body of every file over 1 MiB (``Expect: 100-continue``). Its access log stamps
each request (start, end, connection, bytes), which checks the runs and times the latency.

Fallback: ``vocwatch simulate --sink`` for the throughput runs, and bench/pysink.py (a stdlib server
that logs the same line format) for the timed parts.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

TENANT = "tenant-bench"
API_KEY = "bench-key-not-secret"
UPLOAD_PATH = f"/api/v1/voc/tenants/{TENANT}/recording"
ECHO_MODULE = Path("/usr/lib/nginx/modules/ngx_http_echo_module.so")
LOG_FORMAT = '$msec $request_time $connection $connection_requests $status $request_length "$http_idempotency_key"'


@dataclass(frozen=True, slots=True)
class Arrival:
    start: float  # epoch seconds the request started arriving
    end: float  # epoch seconds the reply was sent
    connection: int
    requests_on_connection: int
    status: int
    length: int  # request bytes received (headers + body)
    key: str  # the Idempotency-Key header, "" if none


def parse_line(line: str) -> Arrival | None:
    try:
        msec, rtime, conn, nreq, status, length, key = line.split(" ", 6)
        end = float(msec)
        return Arrival(end - float(rtime), end, int(conn), int(nreq), int(status), int(length), key.strip().strip('"'))
    except ValueError:
        return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
        time.sleep(0.05)
    return False


class Sink:
    def __init__(self, kind: str, port: int, proc: subprocess.Popen[bytes], log: Path | None, detail: str) -> None:
        self.kind = kind
        self.port = port
        self.proc = proc
        self.log = log
        self.detail = detail

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def upload_url(self) -> str:
        return self.base_url + UPLOAD_PATH

    @property
    def timestamps(self) -> bool:
        return self.log is not None

    def offset(self) -> int:
        return self.log.stat().st_size if self.log is not None and self.log.exists() else 0

    def arrivals(self, since: int = 0) -> list[Arrival]:
        if self.log is None:
            return []
        with open(self.log, encoding="utf-8", errors="replace") as fh:
            fh.seek(since)
            return [a for a in map(parse_line, fh.read().splitlines()) if a is not None]

    def count(self, since: int = 0) -> int:
        """Requests logged since ``since`` (cheap: counts newlines)."""
        if self.log is None:
            return 0
        with open(self.log, "rb") as fh:
            fh.seek(since)
            return fh.read().count(b"\n")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def find_nginx(install: bool) -> str | None:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)
    if found or not install or os.geteuid() != 0 or not shutil.which("apt-get"):
        return found
    print("bench: nginx not found; installing nginx-light with apt-get (loopback sink only)", file=sys.stderr)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "nginx-light"]
    for attempt in range(2):
        try:
            ok = subprocess.run(cmd, env=env, capture_output=True, timeout=240).returncode == 0
        except subprocess.TimeoutExpired:
            ok = False
        if ok or attempt:
            break
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=240)
    return shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)


def _nginx_conf(root: Path, port: int, echo: bool) -> str:
    temp = "\n".join(f"  {name}_temp_path {root / 'tmp' / name};" for name in ("proxy", "fastcgi", "uwsgi", "scgi"))
    if echo:
        answer = 'echo_read_request_body; echo_status 202; echo -n \'{"id":"job-bench"}\';'
        upstream = ""
    else:  # core modules only: the proxy reads the whole body, forwards none of it
        inner = free_port()
        answer = (
            'proxy_pass http://answer; proxy_http_version 1.1; proxy_set_header Connection ""; '
            'proxy_pass_request_body off; proxy_set_header Content-Length ""; proxy_set_header Content-Type "";'
        )
        upstream = (
            f"  upstream answer {{ server 127.0.0.1:{inner}; keepalive 16; }}\n"
            f"  server {{ listen 127.0.0.1:{inner}; access_log off;\n"
            '    location / { default_type application/json; return 202 \'{"id":"job-bench"}\'; } }\n'
        )
    load = f"load_module {ECHO_MODULE};\n" if echo else ""
    return f"""{load}worker_processes auto;
daemon off;
pid {root / "nginx.pid"};
error_log {root / "error.log"} warn;
events {{ worker_connections 4096; }}
http {{
  client_body_temp_path {root / "tmp" / "body"};
{temp}
  log_format bench '{LOG_FORMAT}';
  access_log off;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  client_max_body_size 30m;
  client_body_buffer_size 32m;
{upstream}  server {{
    listen 127.0.0.1:{port} backlog=4096;
    access_log {root / "access.log"} bench;
    default_type application/json;
    location / {{ {answer} }}
  }}
}}
"""


def start_nginx(nginx: str, root: Path) -> Sink | None:
    root = root.resolve()
    shutil.rmtree(root, ignore_errors=True)
    (root / "tmp").mkdir(parents=True)
    port = free_port()
    echo = ECHO_MODULE.exists()
    conf = root / "nginx.conf"
    conf.write_text(_nginx_conf(root, port, echo))
    (root / "access.log").touch()
    os.chmod(root / "access.log", 0o666)
    proc = subprocess.Popen(
        [nginx, "-p", str(root), "-c", str(conf)],
        stdout=open(root / "stdout.log", "wb"),  # noqa: SIM115 - lives as long as nginx
        stderr=subprocess.STDOUT,
    )
    if not wait_listening(port) or proc.poll() is not None:
        proc.kill()
        proc.wait()
        why = "".join(p.read_text(errors="replace") for p in (root / "stdout.log", root / "error.log") if p.exists())
        print(f"bench: nginx did not start: {why[-500:]}", file=sys.stderr)
        return None
    version = subprocess.run([nginx, "-v"], capture_output=True, text=True).stderr.strip()
    how = "echo_read_request_body" if echo else "proxy hop, body read and dropped"
    return Sink("nginx", port, proc, root / "access.log", f"{version} ({how}), worker_processes auto")


def start_python(root: Path, *, logged: bool, latency_s: float = 0.0) -> Sink:
    """``vocwatch simulate --sink`` (no timestamps; ``latency_s`` before each reply) or bench.pysink
    (timestamps every request)."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {**os.environ, "VOCWATCH_API_KEY": API_KEY}
    if logged:
        log = root / "pysink.log"
        log.write_text("")
        argv = [sys.executable, "-m", "bench.pysink", "--port", str(port), "--log", str(log)]
        kind, detail = "bench.pysink", "stdlib ThreadingHTTPServer, reads and drops the body, logs arrivals"
    else:
        log = None
        exe = Path(sys.executable).with_name("vocwatch")
        argv = [str(exe), "simulate", "--port", str(port), "--tenant", TENANT, "--sink", "--latency", str(latency_s)]
        kind, detail = "vocwatch simulate --sink", "stdlib ThreadingHTTPServer, reads and drops the body"
        if latency_s:
            kind, detail = f"{kind} --latency {latency_s:g}", f"{detail}, replies after {latency_s:g} s"
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if not wait_listening(port):
        proc.kill()
        raise RuntimeError(f"{kind} did not start on port {port}")
    return Sink(kind, port, proc, log, detail)


def start_sink(root: Path, *, prefer: str = "auto", install: bool = True) -> Sink:
    if prefer in ("auto", "nginx"):
        nginx = find_nginx(install)
        sink = start_nginx(nginx, root / "nginx") if nginx else None
        if sink is not None:
            return sink
        if prefer == "nginx":
            raise RuntimeError("nginx was asked for but could not be started")
        print("bench: falling back to `vocwatch simulate --sink`", file=sys.stderr)
    return start_python(root / "python", logged=False)
