"""What ``clevertap-pipeline run`` keeps in its ``--data-dir`` from one start to the next, so that a restart
leaves every other shell, console and saved API URL pointing at the same pipeline:

- ``endpoints.json``: the ports of the embedded Redis and the emulator, taken again when they are free;
- the secrets it made up for the emulator (``passcode``, ``write-key``, ``console-key``), each a file only
  this user can read, made once and kept;
- ``env.sh``: the ``export`` lines another shell needs (``source`` it), never a secret itself.
"""

from __future__ import annotations

import os
import shlex
import socket
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import orjson

ENDPOINTS = "endpoints.json"
ENV_FILE = "env.sh"
#: The secrets ``run`` may make up, and the file each is kept in.
SECRET_FILES = {
    "CLEVERTAP_PASSCODE": "passcode",
    "CLEVERTAP_WRITE_KEY": "write-key",
    "CLEVERTAP_CONSOLE_KEY": "console-key",
}


def port_free(port: int) -> bool:
    """Whether nothing listens on 127.0.0.1:``port`` now (so a server started next may take it). As the
    servers do (redis-server, the emulator), with SO_REUSEADDR: the last run's connections still in
    TIME_WAIT do not make it taken."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def shown(path: Path) -> str:
    """A path as a user would type it here: relative to the current folder when it is inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path.resolve())


class DataDir:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)

    def ports(self) -> dict[str, int]:
        """The ports of the last start (``redis``, ``emulator``), as far as they were recorded."""
        try:
            raw = orjson.loads((self.path / ENDPOINTS).read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return {}
        return (
            {k: v for k, v in raw.items() if isinstance(v, int) and 0 < v < 65536}
            if isinstance(raw, dict)
            else {}
        )

    def port_for(self, name: str, notes: list[str]) -> int | None:
        """The port ``name`` had last time when it is free again; None (pick a new one) otherwise, with a
        note saying so: other shells must then ``source`` env.sh again."""
        before = self.ports().get(name)
        if before is None:
            return None
        if port_free(before):
            return before
        notes.append(
            f"note: port {before}, where {name} listened last time, is taken now; it gets a new one: "
            f"other shells must source {shown(self.path / ENV_FILE)} again"
        )
        return None

    def keep_ports(self, ports: Mapping[str, int]) -> None:
        (self.path / ENDPOINTS).write_bytes(orjson.dumps(dict(ports)))

    def secret(self, name: str, make: Callable[[], str]) -> str:
        """The secret kept in ``name``'s file, made with ``make`` and written (0600) the first time."""
        path = self.path / SECRET_FILES[name]
        try:
            value = path.read_text().strip()
        except OSError:
            value = ""
        if not value:
            value = make()
            self.write_secret(name, value)
        return value

    def write_secret(self, name: str, value: str) -> Path:
        path = self.path / SECRET_FILES[name]
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)  # also when the file was there before, with other permissions
        with os.fdopen(fd, "w") as f:
            f.write(value)
        return path

    def exports(self, env: Mapping[str, str], own: Mapping[str, str]) -> list[str]:
        """The ``export`` lines for another shell, also written to env.sh. What ``run`` made up itself (the
        embedded Redis, the emulator and its demo account) is there as it is, and the commands of this
        installation on PATH; a secret only as ``$(cat FILE)`` of a file only this user reads; what the
        user set (``own``: a Redis URL may hold a password, a passcode is a secret) is left for them to set
        as they did."""
        lines = [f'export PATH={shlex.quote(str(Path(sys.executable).parent))}:"$PATH"']
        made = {
            n: env[n]
            for n in ("REDIS_URL", "CLEVERTAP_ACCOUNT_ID", "CLEVERTAP_REGION", "CLEVERTAP_API_URL")
            if env.get(n) and n not in own
        }
        if made:
            lines.append("export " + " ".join(f"{n}={shlex.quote(v)}" for n, v in made.items()))
        for secret in SECRET_FILES:
            if env.get(secret) and secret not in own:
                path = self.write_secret(secret, env[secret])
                lines.append(f'export {secret}="$(cat {shlex.quote(str(path.resolve()))})"')
        (self.path / ENV_FILE).write_text(
            "# Written by clevertap-pipeline run: `source` it to talk to that pipeline from another shell.\n"
            + "\n".join(lines)
            + "\n"
        )
        return lines
