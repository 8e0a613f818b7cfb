"""Real deployments for tests: the systemd units' commands and nginx, HAProxy and Caddy (Debian
packages) run unprivileged on loopback ports with the files shipped in deploy/, changed only
in their ports and paths."""

import contextlib
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from tests.servers import GUNICORN, ROOT, free_port, stop_process

DEPLOY = ROOT / "deploy"
APP_DIR = "/srv/agentphone"  # where the units expect the code
APP_ADDRESS = "127.0.0.1:8000"  # where the proxies expect gunicorn

# What Debian's own /etc/nginx/nginx.conf sets for every site (gzip on included), with the
# paths an unprivileged server can write to.
NGINX_MAIN = """\
daemon off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log info;
events {{ worker_connections 1024; }}
http {{
    access_log {tmp}/nginx-access.log;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    types_hash_max_size 2048;
    gzip on;
    include {site};
}}
"""

# Debian's /etc/haproxy/haproxy.cfg as installed, less what needs root (chroot, user, admin
# socket, syslog): its `defaults` has the 50 s timeouts the shipped file must override.
HAPROXY_DEBIAN = """\
global
    maxconn 4096

defaults
    mode http
    option httplog
    option dontlognull
    timeout connect 5000
    timeout client  50000
    timeout server  50000

"""

CADDY_GLOBAL = "{\n    admin off\n}\n\n"


def service(name):
    """The [Service] settings of deploy/systemd/NAME: {key: [value, ...]}."""
    settings, section = {}, None
    for raw in (DEPLOY / "systemd" / name).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]":
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def unit_command(name, port=None):
    """A unit's ExecStart and Environment, its venv and gunicorn's port made this test's."""
    settings = service(name)
    assert settings["WorkingDirectory"] == [APP_DIR]
    exec_start = settings["ExecStart"][0].replace(f"{APP_DIR}/.venv/bin/", f"{GUNICORN.parent}/")
    env = dict(item.split("=", 1) for item in settings.get("Environment", []))
    if port is not None:
        env = {k: v.replace(APP_ADDRESS, f"127.0.0.1:{port}") for k, v in env.items()}
    return shlex.split(exec_start), env


def template(path, replacements):
    """The text of a shipped file with each ``old`` replaced (each must be there)."""
    text = path.read_text()
    for old, new in replacements.items():
        assert old in text, f"{old!r} not in {path}"
        text = text.replace(old, new)
    return text


@dataclass
class Proxy:
    name: str
    url: str
    process: subprocess.Popen
    log_path: Path

    def log(self):
        return self.log_path.read_text(errors="replace")

    def stop(self):
        stop_process(self.process)


def _start(name, tmp_path, port, argv, env=None):
    log_path = tmp_path / f"{name}-{port}.log"
    with log_path.open("w") as log_file:
        process = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT, env=env,
                                   cwd=tmp_path)
    proxy = Proxy(name, f"http://127.0.0.1:{port}", process, log_path)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited:\n{proxy.log()[-3000:]}")
        # An answer through the proxy, not only a listening port: Caddy once cut the first
        # request's upstream stream a few milliseconds after it began to listen.
        with contextlib.suppress(requests.RequestException):
            requests.get(f"{proxy.url}/healthz", timeout=2)
            return proxy
        time.sleep(0.05)
    proxy.stop()
    raise RuntimeError(f"{name} did not listen on {port}:\n{proxy.log()[-3000:]}")


def start_nginx(tmp_path, upstream_port, extra=None):
    """deploy/nginx/agentphone.conf inside Debian's http defaults; ``extra`` templates more."""
    port = free_port()
    work = tmp_path / f"nginx-{port}"
    work.mkdir()
    site = work / "agentphone.conf"
    site.write_text(template(DEPLOY / "nginx" / "agentphone.conf", {
        f"server {APP_ADDRESS};": f"server 127.0.0.1:{upstream_port};",
        "    listen 80;\n": f"    listen 127.0.0.1:{port};\n",
        "    listen [::]:80;\n": "",
        **(extra or {}),
    }))
    main = work / "nginx.conf"
    main.write_text(NGINX_MAIN.format(tmp=work, site=site))
    return _start("nginx", tmp_path, port,
                  [shutil.which("nginx") or "/usr/sbin/nginx", "-p", str(work), "-c", str(main),
                   "-e", str(work / "nginx-error.log")])


def start_haproxy(tmp_path, upstream_port, extra=None):
    """deploy/haproxy/agentphone.cfg appended to Debian's haproxy.cfg, as the README says."""
    port = free_port()
    config = tmp_path / f"haproxy-{port}.cfg"
    config.write_text(HAPROXY_DEBIAN + template(DEPLOY / "haproxy" / "agentphone.cfg", {
        f"server gunicorn1 {APP_ADDRESS}": f"server gunicorn1 127.0.0.1:{upstream_port}",
        "    bind :80\n": f"    bind 127.0.0.1:{port}\n",
        **(extra or {}),
    }))
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    subprocess.run([haproxy, "-c", "-q", "-f", str(config)], check=True, timeout=30)
    return _start("haproxy", tmp_path, port, [haproxy, "-db", "-f", str(config)])


def start_caddy(tmp_path, upstream_port):
    """deploy/caddy/Caddyfile served over plain HTTP on loopback (no certificate)."""
    port = free_port()
    work = tmp_path / f"caddy-{port}"
    work.mkdir()
    config = work / "Caddyfile"
    config.write_text(CADDY_GLOBAL + template(DEPLOY / "caddy" / "Caddyfile", {
        "agentphone.example.com {": f"http://127.0.0.1:{port} {{",
        f"reverse_proxy {APP_ADDRESS}": f"reverse_proxy 127.0.0.1:{upstream_port}",
    }))
    env = {"PATH": "/usr/bin:/bin", "HOME": str(work), "XDG_DATA_HOME": str(work / "data"),
           "XDG_CONFIG_HOME": str(work / "config")}
    return _start("caddy", tmp_path, port,
                  [shutil.which("caddy") or "/usr/bin/caddy", "run", "--config", str(config),
                   "--adapter", "caddyfile"], env)


STARTERS = {"nginx": start_nginx, "haproxy": start_haproxy, "caddy": start_caddy}
