"""Throwaway servers for tests and benchmarks: a PostgreSQL cluster (initdb + pg_ctl in a temporary folder,
on 127.0.0.1 and a free port) and an `mlflow server` on it. Both stop when their context ends.

Debian's `postgresql` package puts the binaries in /usr/lib/postgresql/<version>/bin. initdb refuses to run
as root, so as root the cluster belongs to the `postgres` user (runuser), in a folder made over to it.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SUPERUSER = "postgres"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pg_bin_dir() -> Path | None:
    """Where initdb and pg_ctl are: on PATH, else Debian's versioned folder (the newest)."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(os.path.realpath(found)).parent
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]), reverse=True):
        if Path(folder, "initdb").is_file() and Path(folder, "pg_ctl").is_file():
            return Path(folder)
    return None


def why_no_postgres() -> str | None:
    """None when a throwaway cluster can be started here, else the reason (for pytest.skip)."""
    if pg_bin_dir() is None:
        return "PostgreSQL is not installed (apt-get install postgresql; .ci/run does it)"
    if os.geteuid() == 0:
        try:
            import pwd

            pwd.getpwnam(SUPERUSER)
        except KeyError:
            return "running as root and there is no 'postgres' user for initdb"
        if shutil.which("runuser") is None:
            return "running as root without runuser (util-linux) to start PostgreSQL as 'postgres'"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "the psycopg driver is not installed (pip install 'kdexp[postgres]')"
    return None


@dataclass
class Postgres:
    port: int
    password: str  # the superuser's
    folder: Path

    def url(self, database: str = "postgres", user: str = SUPERUSER, password: str | None = None,
            driver: str = "postgresql+psycopg") -> str:
        password = self.password if password is None and user == SUPERUSER else password
        auth = f"{user}:{password}" if password else user
        return f"{driver}://{auth}@127.0.0.1:{self.port}/{database}"

    def sql(self, *statements: str, database: str = "postgres") -> None:
        """Run statements as the superuser, outside a transaction (CREATE DATABASE needs that)."""
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user=SUPERUSER, password=self.password,
                             dbname=database, autocommit=True) as conn:
            for statement in statements:
                conn.execute(statement)

    def add_database(self, name: str, owner: str, password: str) -> str:
        """A role (if new) owning a new database; its SQLAlchemy URL, password included."""
        self.sql(f"DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{owner}') THEN "
                 f"CREATE ROLE {owner} LOGIN PASSWORD '{password}'; END IF; END$$",
                 f"CREATE DATABASE {name} OWNER {owner}")
        return self.url(name, owner, password)

    def dump(self) -> str:
        """Every database, as SQL text (pg_dumpall), to look for what must not be stored."""
        env = {**os.environ, "PGPASSWORD": self.password}
        return subprocess.run([str(pg_bin_dir() / "pg_dumpall"), "-h", "127.0.0.1", "-p", str(self.port),
                               "-U", SUPERUSER], env=env, capture_output=True, text=True, check=True,
                              timeout=120).stdout


def _as_owner(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", SUPERUSER, "--", *cmd] if os.geteuid() == 0 else cmd


@contextlib.contextmanager
def postgres_cluster(password: str = "superpw") -> Iterator[Postgres]:
    """initdb + pg_ctl start on 127.0.0.1:<free port> with password (scram) authentication over TCP."""
    bin_dir = pg_bin_dir()
    folder = Path(tempfile.mkdtemp(prefix="kdexp-pg-"))
    data, pwfile = folder / "data", folder / "pwfile"
    pwfile.write_text(password + "\n")
    if os.geteuid() == 0:
        shutil.chown(folder, SUPERUSER)
        shutil.chown(pwfile, SUPERUSER)
    os.chmod(folder, 0o700)
    run = {"capture_output": True, "text": True, "timeout": 120}
    subprocess.run(_as_owner([str(bin_dir / "initdb"), "-D", str(data), "-U", SUPERUSER, f"--pwfile={pwfile}",
                              "--auth-host=scram-sha-256", "--auth-local=trust", "-E", "UTF8"]), check=True, **run)
    port = free_port()
    options = f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={folder} -c fsync=off"
    try:
        subprocess.run(_as_owner([str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(folder / "log"),
                                  "-o", options, "-w", "-t", "60", "start"]), check=True, **run)
        yield Postgres(port, password, folder)
    finally:
        subprocess.run(_as_owner([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]),
                       capture_output=True, timeout=60, check=False)
        shutil.rmtree(folder, ignore_errors=True)


class MlflowServer:
    """`mlflow server` on 127.0.0.1:<free port>, proxying artifacts to `artifacts`. Starts at once; `wait()`
    blocks until it answers /health (start it early: it takes seconds); `stop()` ends it and its workers."""

    def __init__(self, backend_uri: str, artifacts: Path, log: Path):
        self.port, self.artifacts, self.log = free_port(), artifacts, log
        self.url = f"http://127.0.0.1:{self.port}"
        artifacts.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_uri, "--artifacts-destination",
               str(artifacts), "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        with open(log, "w") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def wait(self, timeout_s: float = 180) -> MlflowServer:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as reply:
                    if reply.status == 200:
                        return self
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not start (exit {self.proc.poll()}):\n"
                                   f"{self.log.read_text()[-3000:]}")
            time.sleep(0.5)

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)  # its own session: the server and its workers
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def __enter__(self) -> MlflowServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
