"""The processes of the router benchmark: stand-in pods, the voxfleet router, nginx.

Each is a real process on 127.0.0.1 that the benchmark starts, knows the PIDs
of (for CPU) and stops. nginx is the Debian package, installed with apt-get
when missing, run from a private prefix (its own config, pid file, logs and
temp folders under the run's log folder; the system's nginx is not touched).
Every wait here is bounded.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from bench.common.procstat import children_of
from bench.common.processes import ServerProcess, free_port
from bench.common.provenance import REPO

STANDIN = Path(__file__).resolve().parent / "standin_pod.py"
STANDIN_CAPACITY = 100_000
NGINX_CANDIDATES = ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx")


@dataclass
class Proc(ServerProcess):
    env: dict = field(default_factory=dict)
    harness: bool = False  # part of the load (run.py's --harness-sched batch), not what is measured: ServerProcess.spawn

    def launch(self) -> None:
        self.spawn(dict(os.environ, PYTHONUNBUFFERED="1", **self.env), log_mode="ab", new_session=True,
                   harness=self.harness)

    def stop(self, timeout: float = 15.0) -> int | None:
        return super().stop(timeout)


def standin(i: int, log_dir: Path, binary: str | None = None, harness: bool = True) -> Proc:
    """Stand-in pod i: standin_pod.py, or the Go stand-in (goharness cmd/standin) when given its binary;
    `harness`: run it as part of the load (ServerProcess.spawn), else like a proxy, in a session of its own."""
    port = free_port()
    args = ["--host", "127.0.0.1", "--port", str(port), "--pod-id", f"standin-{i}", "--capacity", str(STANDIN_CAPACITY)]
    if binary is None:
        return Proc(f"standin-{i}", [sys.executable, str(STANDIN), *args], port, log_dir / f"standin-{i}.log",
                    harness=harness)
    return Proc(f"standin-{i}", [binary, *args], port, log_dir / f"standin-{i}.log",
                env={"GOMAXPROCS": go_maxprocs()}, harness=harness)


def go_maxprocs() -> str:
    """GOMAXPROCS for the Go harness's processes: 1 unless the environment says otherwise. Each is one
    event loop doing a few microseconds of work per message; idle Go threads spinning for work would take
    CPU from the proxy under test."""
    return os.environ.get("GOMAXPROCS", "1")


def router_argv(port: int, pod_urls: list[str], placement: str, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "voxfleet", "router", "--host", "127.0.0.1", "--port", str(port),
            "--pods", ",".join(pod_urls), "--anonymous", "--placement", placement,
            "--max-queue", "10000", "--anonymous-max-sessions", "0", "--log-level", "warning", *extra]


def router(pod_urls: list[str], placement: str, extra: list[str], log_dir: Path) -> Proc:
    port = free_port()
    return Proc("router", router_argv(port, pod_urls, placement, extra), port, log_dir / "router.log")


def pipe(pod_urls: list[str], log_dir: Path) -> Proc:
    """The floor: a bare Python TCP pipe (pipe.py), no WebSocket work at all."""
    port = free_port()
    argv = [sys.executable, str(Path(__file__).with_name("pipe.py")), "--host", "127.0.0.1", "--port", str(port),
            "--pods", ",".join(pod_urls)]
    return Proc("pipe", argv, port, log_dir / "pipe.log")


# --- nginx --------------------------------------------------------------------------


def find_nginx() -> str | None:
    found = shutil.which("nginx")
    if found:
        return found
    return next((c for c in NGINX_CANDIDATES if os.access(c, os.X_OK)), None)


def ensure_nginx(log=print) -> str:
    """The nginx binary; installs the Debian package `nginx` with apt-get when there is none."""
    found = find_nginx()
    if found:
        return found
    if shutil.which("apt-get") is None:
        raise RuntimeError("nginx is not installed and there is no apt-get: install nginx and rerun")
    sudo = [] if os.geteuid() == 0 else (["sudo", "-n"] if shutil.which("sudo") else None)
    if sudo is None:
        raise RuntimeError("nginx is not installed; run `apt-get install nginx` as root and rerun")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = [*sudo, "apt-get", "install", "-y", "--no-install-recommends", "nginx"]
    log("nginx not found: " + " ".join(install))
    done = subprocess.run(install, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        log("apt-get install failed; apt-get update, then again")
        subprocess.run([*sudo, "apt-get", "update"], env=env, capture_output=True, text=True, timeout=600)
        done = subprocess.run(install, env=env, capture_output=True, text=True, timeout=600)
    found = find_nginx()
    if done.returncode != 0 or not found:
        raise RuntimeError(f"could not install nginx:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return found


def nginx_version(binary: str) -> str:
    done = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=10)
    return (done.stderr or done.stdout).strip().replace("nginx version: ", "")


def nginx_conf(prefix: Path, port: int, pod_ports: list[int], workers: str, open_files: int) -> str:
    """A sticky WebSocket proxy: each session (`?session=ID`) hashes onto one pod, consistent hashing.

    `open_files` is the open-file limit nginx inherits (it cannot raise it past the hard limit);
    a proxied WebSocket holds two descriptors, so each worker takes up to half as many connections."""
    servers = "\n".join(f"        server 127.0.0.1:{p};" for p in pod_ports)
    connections = max(1024, open_files - 64)
    tmp = prefix / "tmp"
    return f"""# generated by bench/router/servers.py: nginx as a sticky WebSocket proxy in front of the stand-in pods
worker_processes {workers};
worker_rlimit_nofile {open_files};
error_log {prefix}/error.log warn;
pid {prefix}/nginx.pid;

events {{
    worker_connections {connections};
}}

http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;

    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      close;
    }}

    upstream pods {{
        hash $arg_session consistent;
{servers}
    }}

    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://pods;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $host;
            proxy_buffering off;
            proxy_connect_timeout 10s;
            proxy_read_timeout 1h;
            proxy_send_timeout 1h;
        }}
    }}
}}
"""


def nginx(binary: str, pod_ports: list[int], workers: str, log_dir: Path) -> Proc:
    open_files = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    prefix = (log_dir / "nginx").resolve()
    for sub in ("tmp/body", "tmp/proxy", "tmp/fastcgi", "tmp/uwsgi", "tmp/scgi"):
        (prefix / sub).mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(nginx_conf(prefix, port, pod_ports, workers, open_files))
    argv = [binary, "-p", str(prefix), "-c", str(conf), "-g", "daemon off; master_process on;"]
    return Proc("nginx", argv, port, log_dir / "nginx.log")


def check_nginx_conf(proc: Proc) -> None:
    test = [*proc.argv, "-t"]
    done = subprocess.run(test, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"nginx -t failed:\n{done.stderr}")


def nginx_pids(proc: Proc) -> list[int]:
    """nginx's master and its workers (the workers do the proxying)."""
    if proc.pid is None:
        return []
    return [proc.pid, *children_of(proc.pid)]


def python_argv_for_docs(argv: list[str], port: int, pod_ports: list[int]) -> str:
    """A process's command line as the docs show it: `python`, placeholders for ports."""
    import shlex

    if Path(argv[0]).name == "standin":  # the Go stand-in, from bench/router/goharness/build.sh's cache folder
        text = "$(bench/router/goharness/build.sh)/standin " + shlex.join(argv[1:])
    else:
        text = shlex.join(["python", *argv[1:]])
    text = text.replace(f"127.0.0.1:{port}", "127.0.0.1:<port>").replace(f"--port {port}", "--port <port>")
    for i, p in enumerate(pod_ports):
        text = text.replace(f"127.0.0.1:{p}", f"127.0.0.1:<pod{i}>")
    return text.replace(str(REPO) + "/", "")
