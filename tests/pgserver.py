"""A throwaway PostgreSQL server with pgvector for the export tests: the real server, started and stopped here.

The Debian packages provide the server (``postgresql-15``); ``.ci/install-pgvector`` builds the pgvector
extension from Debian's source package. Tests skip, saying which part is missing, where neither is installed.
"""
from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile


def _bindir() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return os.path.dirname(found[-1]) if found else None


def missing() -> str | None:
    """Why no server can be started here, or None."""
    bindir = _bindir()
    if bindir is None:
        return "PostgreSQL server binaries not found (.ci/run installs postgresql-15)"
    share = subprocess.run([os.path.join(bindir, "pg_config"), "--sharedir"], capture_output=True, text=True)
    sharedir = share.stdout.strip() or "/usr/share/postgresql/" + bindir.split("/")[-2]
    if not os.path.exists(os.path.join(sharedir, "extension", "vector.control")):
        return "the pgvector extension is not installed (.ci/install-pgvector builds it from Debian's source)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root without a 'postgres' user to run the server as"
    return None


def _as_server_user(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server():
    """Yield a libpq connection string to a fresh server on a Unix socket; stop and remove it after."""
    bindir = _bindir()
    root = tempfile.mkdtemp(prefix="shrink-pg-")
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    data, port = os.path.join(root, "data"), _free_port()
    run = lambda *cmd: subprocess.run(_as_server_user([os.path.join(bindir, cmd[0]), *cmd[1:]]),  # noqa: E731
                                      check=True, capture_output=True, text=True)
    try:
        run("initdb", "-D", data, "-A", "trust", "-U", "shrink", "--no-sync", "-E", "UTF8")
        run("pg_ctl", "-D", data, "-w", "-l", os.path.join(root, "log"), "-o",
            f"-k {root} -c listen_addresses='' -p {port} -F", "start")
        yield f"host={root} port={port} dbname=postgres user=shrink"
    finally:
        subprocess.run(_as_server_user([os.path.join(bindir, "pg_ctl"), "-D", data, "-m", "immediate", "stop"]),
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
