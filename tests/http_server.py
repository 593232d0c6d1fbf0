"""A bemcp server over Streamable HTTP in a child process, for tests."""

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import httpx2 as httpx

MODERN = "2026-07-28"
MODERN_META = {"io.modelcontextprotocol/protocolVersion": MODERN,
               "io.modelcontextprotocol/clientCapabilities": {},
               "io.modelcontextprotocol/clientInfo": {"name": "bemcp-tests", "version": "0"}}
ACCEPT = "application/json, text/event-stream"
_NAMED = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class HttpServer:
    """``python -m bemcp serve --http PORT`` (or another module taking --http) until close()."""

    def __init__(self, *args, env=None, module=("bemcp", "serve"), script=None, port=None, wait=True):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        full_env = dict(os.environ)
        full_env.update(env or {})
        self._err = tempfile.TemporaryFile()    # a file: a chatty server never blocks on it
        command = [sys.executable, script] if script else [sys.executable, "-m", *module]
        self.proc = subprocess.Popen([*command, "--http", str(self.port), *args],
                                     env=full_env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=self._err, start_new_session=True)
        self.stderr = None
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout=30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.close()
                raise RuntimeError(f"server exited {self.proc.returncode}: {self.stderr}")
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise TimeoutError("server did not listen in time")

    def close(self, sig=signal.SIGTERM, timeout=15.0):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.stderr is None:
            self._err.seek(0)
            self.stderr = self._err.read().decode(errors="replace")
            self._err.close()
            self.proc.stdout.close()
        return self.proc.returncode


def modern_headers(method, params=None, **extra):
    headers = {"content-type": "application/json", "accept": ACCEPT,
               "mcp-protocol-version": MODERN, "mcp-method": method}
    key = _NAMED.get(method)
    if key is not None and params and key in params:
        headers["mcp-name"] = params[key]
    headers.update(extra)
    return headers


def modern_post(client, url, method, params=None, id=1, headers=None):
    """A 2026-07-28 request with the headers its body calls for."""
    params = dict(params or {})
    params.setdefault("_meta", MODERN_META)
    body = {"jsonrpc": "2.0", "id": id, "method": method, "params": params}
    return client.post(url, json=body, headers=headers or modern_headers(method, params))


# -- nginx in front of several processes, configured as docs/deploy.md says ------------------------

DEPLOY_DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "deploy.md")


def deploy_snippet(listen_port, backend_ports):
    """docs/deploy.md's nginx configuration, its ports changed: 8100 becomes ``listen_port``;
    each line naming 8101 is repeated for every backend port; the doc's second
    example process (8102) is dropped."""
    with open(DEPLOY_DOC) as f:
        doc = f.read()
    block = doc.split("```nginx\n", 1)[1].split("```", 1)[0]
    out = []
    for line in block.splitlines():
        if "8102" in line:
            continue
        if "8101" in line:
            out.extend(line.replace("8101", str(p)) for p in backend_ports)
        else:
            out.append(line.replace("8100", str(listen_port)))
    return "\n".join(out) + "\n"


def nginx_binary():
    import shutil
    return shutil.which("nginx") or "/usr/sbin/nginx"


class Nginx:
    """nginx in the foreground with its own prefix directory, serving deploy_snippet()."""

    def __init__(self, directory, listen_port, backend_ports, workers=1):
        self.port = listen_port
        self.url = f"http://127.0.0.1:{listen_port}/mcp"
        os.makedirs(os.path.join(directory, "tmp"), exist_ok=True)
        os.chmod(directory, 0o777)
        with open(os.path.join(directory, "bemcp.conf"), "w") as f:
            f.write(deploy_snippet(listen_port, backend_ports))
        temp = os.path.join(directory, "tmp")
        conf = os.path.join(directory, "nginx.conf")
        with open(conf, "w") as f:
            f.write(f"""worker_processes {workers};
error_log {directory}/error.log warn;
pid {directory}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    include {directory}/bemcp.conf;
}}
""")
        check = subprocess.run([nginx_binary(), "-t", "-p", directory, "-c", conf],
                               capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"nginx -t failed: {check.stderr}")
        self.proc = subprocess.Popen([nginx_binary(), "-p", directory, "-c", conf, "-g", "daemon off;"],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", listen_port), 0.2).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"nginx did not start: {self.proc.stderr.read().decode()}")
                time.sleep(0.05)

    def close(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stderr.close()
