"""PostgreSQL of the embedded stack: initdb, configure for logical decoding, start, bootstrap roles.

Runs the system server binaries (``stack.postgres_bin_dir``, else the newest
/usr/lib/postgresql/*/bin, else ``pg_config --bindir``) on 127.0.0.1:``stack.postgres_port``.
PostgreSQL refuses to run as root, so as root every server command goes through
``runuser -u postgres --`` and the data dir belongs to ``postgres``.

Roles (names from ``postgres.app_role`` / ``postgres.cdc_user``): ``crawlstream_owner`` owns the
database and runs migrations; the app role gets DML from the migration; the CDC role has
REPLICATION and gets SELECT from the migration. Neither may create objects: CREATE on every schema
of the database is revoked from them and from PUBLIC, whatever the PostgreSQL version. Passwords
are generated once and kept only in ``<state_dir>/secrets.json`` (0600) and ``stack.env``.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import pwd
import re
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from control.stack.processes import service_error
from crawlstream.errors import PrerequisiteError, StackError
from crawlstream.settings import Settings

DB_NAME = "crawlstream"
OWNER_ROLE = "crawlstream_owner"
OS_USER = "postgres"
PG_HINT = "apt-get install postgresql (or set CRAWLSTREAM_STACK__POSTGRES_BIN_DIR)"
_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_SOCKET_PATH_MAX = 100  # sun_path holds 108 bytes; keep a margin


def find_bin_dir(settings: Settings) -> Path:
    """The directory with initdb, pg_ctl, postgres, psql and pg_isready."""
    candidates: list[Path] = []
    if settings.stack.postgres_bin_dir is not None:
        candidates.append(settings.stack.postgres_bin_dir)
    else:
        versions = sorted(
            (p for p in glob.glob("/usr/lib/postgresql/*/bin") if p.split("/")[-2].isdigit()),
            key=lambda p: int(p.split("/")[-2]),
        )
        candidates.extend(Path(p) for p in reversed(versions))
        if pg_config := shutil.which("pg_config"):
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
            candidates.append(Path(out.stdout.strip()))
    for bin_dir in candidates:
        if all((bin_dir / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres", "psql", "pg_isready")):
            return bin_dir
    where = ", ".join(map(str, candidates)) or "no candidate directory"
    raise PrerequisiteError(
        f"PostgreSQL server binaries (initdb, pg_ctl, postgres) not found in {where}: {PG_HINT}"
    )


def running_as_root() -> bool:
    return os.geteuid() == 0


def as_db_user(argv: list[str]) -> list[str]:
    return ["runuser", "-u", OS_USER, "--", *argv] if running_as_root() else argv


@dataclass(frozen=True)
class PgLayout:
    bin_dir: Path
    data_dir: Path
    socket_dir: Path
    port: int
    superuser: str

    def tool(self, name: str) -> str:
        return str(self.bin_dir / name)


def _traversable_by_postgres(path: Path) -> bool:
    # `test -x` on a directory needs search permission on it and on every parent.
    probe = subprocess.run(["runuser", "-u", OS_USER, "--", "test", "-x", str(path)], check=False)
    return probe.returncode == 0


def plan_layout(settings: Settings, bin_dir: Path) -> PgLayout:
    """Where the cluster lives; as root, falls back to /var/lib/postgresql when the state dir's
    parents are not traversable by ``postgres``. The choice is recorded in ``postgres.location``."""
    state = settings.stack.state_dir.resolve()
    record = state / "postgres.location"
    superuser = pwd.getpwuid(os.geteuid()).pw_name
    if running_as_root():
        try:
            pwd.getpwnam(OS_USER)
        except KeyError:
            raise PrerequisiteError(
                f"running as root needs the '{OS_USER}' OS user (PostgreSQL refuses root): {PG_HINT}"
            ) from None
        superuser = OS_USER
    key = hashlib.sha256(str(state).encode()).hexdigest()[:12]
    state.mkdir(parents=True, exist_ok=True)
    if record.is_file():
        data_dir = Path(record.read_text().strip())
    elif running_as_root() and not _traversable_by_postgres(state):
        data_dir = Path(pwd.getpwnam(OS_USER).pw_dir) / f"crawlstream-{key}"
    else:
        data_dir = state / "postgres"
    socket_dir = data_dir
    if len(str(data_dir / f".s.PGSQL.{settings.stack.postgres_port}")) > _SOCKET_PATH_MAX:
        socket_dir = Path(tempfile.gettempdir()) / f"crawlstream-pg-{key}"
    record.write_text(f"{data_dir}\n")
    return PgLayout(bin_dir, data_dir, socket_dir, settings.stack.postgres_port, superuser)


def render_conf(layout: PgLayout) -> str:
    """Overrides included from postgresql.conf (rewritten at every start)."""
    return (
        "# Written by `crawlstream stack up` (control/stack/postgres.py) at every start.\n"
        "listen_addresses = '127.0.0.1'\n"
        f"port = {layout.port}\n"
        f"unix_socket_directories = '{layout.socket_dir}'\n"
        "# Debezium reads changes through logical decoding (pgoutput) over a replication slot.\n"
        "wal_level = logical\n"
        "max_wal_senders = 10\n"
        "max_replication_slots = 10\n"
        "password_encryption = 'scram-sha-256'\n"
    )


def render_hba(settings: Settings) -> str:
    cdc = settings.postgres.cdc_user
    return (
        "# Written by `crawlstream stack up`: peer for the local superuser, scram over TCP.\n"
        "local   all          all                    peer\n"
        "host    all          all      127.0.0.1/32  scram-sha-256\n"
        f"host    replication  {cdc:<8} 127.0.0.1/32  scram-sha-256\n"
    )


def _write(path: Path, text: str, mode: int = 0o600) -> None:
    path.write_text(text)
    path.chmod(mode)
    if running_as_root():
        shutil.chown(path, OS_USER, OS_USER)


def _prepare_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    if running_as_root():
        shutil.chown(path, OS_USER, OS_USER)


def initialised(layout: PgLayout) -> bool:
    return (layout.data_dir / "PG_VERSION").is_file()


def initdb(layout: PgLayout, log_path: Path) -> None:
    _prepare_dir(layout.data_dir)
    argv = [
        layout.tool("initdb"),
        "-D",
        str(layout.data_dir),
        "-U",
        layout.superuser,
        "-E",
        "UTF8",
        "--locale=C",
        "--auth-local=peer",
        "--auth-host=scram-sha-256",
        "--no-instructions",
    ]
    run_logged(as_db_user(argv), log_path, "initdb")
    conf = layout.data_dir / "postgresql.conf"
    conf.write_text(conf.read_text() + "\ninclude = 'crawlstream.conf'\n")


def write_config(layout: PgLayout, settings: Settings) -> None:
    _write(layout.data_dir / "crawlstream.conf", render_conf(layout))
    _write(layout.data_dir / "pg_hba.conf", render_hba(settings))
    if layout.socket_dir != layout.data_dir:
        _prepare_dir(layout.socket_dir)


def start_command(layout: PgLayout) -> list[str]:
    # -W: return at once; the supervisor polls pg_isready with its own deadline.
    return as_db_user([layout.tool("pg_ctl"), "start", "-D", str(layout.data_dir), "-W", "-s"])


def stop_command(layout: PgLayout) -> list[str]:
    return as_db_user([layout.tool("pg_ctl"), "stop", "-D", str(layout.data_dir), "-m", "fast", "-W", "-s"])


def postmaster_pid(layout: PgLayout) -> int | None:
    try:
        return int((layout.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
    except (FileNotFoundError, ValueError):
        return None


def cluster_processes(layout: PgLayout) -> list[int]:
    """Live processes of this cluster: the postmaster and its children all run in the data
    directory, so their ``/proc/<pid>/cwd`` names it (zombies have no cwd and do not count)."""
    data_dir = str(layout.data_dir.resolve())
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.readlink(entry / "cwd") == data_dir:
                found.append(int(entry.name))
        except OSError:  # gone meanwhile, a zombie, or not ours to inspect
            continue
    return sorted(found)


def stale_lock_reason(layout: PgLayout) -> str | None:
    """Clear the way for a start after a crash; None when the server may start, else why not.

    A server killed with SIGKILL leaves its lock files behind (``postmaster.pid`` in the data
    directory, ``.s.PGSQL.<port>.lock`` beside its socket). PostgreSQL ignores a lock whose pid
    is gone, but refuses while that pid still exists, and a killed postmaster stays a zombie
    until its parent (init, once ``pg_ctl`` exited) reaps it, which took minutes here; its
    backends notice the death and exit within moments. So: wait until no process of the
    cluster is alive, then the locks name a dead server and are removed. PostgreSQL itself
    still refuses to start while its old shared memory is attached anywhere.
    """
    locks = [layout.data_dir / "postmaster.pid", layout.socket_dir / f".s.PGSQL.{layout.port}.lock"]
    if not any(lock.exists() for lock in locks):
        return None
    alive = cluster_processes(layout)
    if alive:
        return f"processes of the previous server are still running: {alive}"
    for lock in locks:
        lock.unlink(missing_ok=True)
    return None


def health(layout: PgLayout) -> str | None:
    """None when the server accepts TCP connections, else the reason."""
    proc = subprocess.run(
        [layout.tool("pg_isready"), "-h", "127.0.0.1", "-p", str(layout.port), "-d", "postgres", "-t", "3"],
        capture_output=True,
        text=True,
        check=False,
    )
    return None if proc.returncode == 0 else (proc.stdout.strip() or f"pg_isready exit {proc.returncode}")


def run_logged(argv: list[str], log_path: Path, what: str, timeout_s: float = 300) -> None:
    """Run a Postgres tool with its output appended to ``log_path``; fail naming ``what``.

    A postmaster started this way inherits the log as stdout/stderr, so it needs no write
    access of its own to the logs folder.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as out:
        proc = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd="/",
            check=False,
            timeout=timeout_s,
        )
    if proc.returncode != 0:
        raise service_error("postgres", f"{what} failed (exit {proc.returncode})", log_path)


def psql(layout: PgLayout, sql: str, db: str = "postgres", redact: tuple[str, ...] = ()) -> str:
    """Run ``sql`` as the local superuser over the unix socket (peer auth); returns stdout."""
    argv = [
        layout.tool("psql"),
        "-X",
        "-q",
        "-A",
        "-t",
        "-v",
        "ON_ERROR_STOP=1",
        "-h",
        str(layout.socket_dir),
        "-p",
        str(layout.port),
        "-U",
        layout.superuser,
        "-d",
        db,
    ]
    # SQL goes through stdin so passwords never show up in a process listing.
    proc = subprocess.run(as_db_user(argv), input=sql, capture_output=True, text=True, cwd="/", check=False)
    if proc.returncode != 0:
        message = proc.stderr.strip()
        for secret in redact:
            message = message.replace(secret, "***")
        raise StackError(f"postgres: psql as {layout.superuser} failed: {message}")
    return proc.stdout


def load_or_create_secrets(state_dir: Path) -> dict[str, str]:
    """Role passwords, generated once with ``secrets`` and kept in ``secrets.json`` (0600)."""
    path = state_dir / "secrets.json"
    if path.is_file():
        stored: dict[str, str] = json.loads(path.read_text())
        if {"owner", "app", "cdc"} <= stored.keys():
            return stored
    values = {role: secrets.token_urlsafe(24) for role in ("owner", "app", "cdc")}
    state_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(values, fh)
    path.chmod(0o600)
    return values


def bootstrap_sql(settings: Settings, passwords: dict[str, str]) -> str:
    """Idempotent: creates missing roles and the database, (re)sets passwords, grants CONNECT."""
    app, cdc = settings.postgres.app_role, settings.postgres.cdc_user
    for name in (app, cdc):
        if not _IDENT.match(name):
            raise StackError(f"postgres role name {name!r} is not a plain lower-case identifier")
    # Every name interpolated below is a constant or passed _IDENT above: no injection path.
    lines = []
    for role, attrs in ((OWNER_ROLE, "LOGIN"), (app, "LOGIN"), (cdc, "LOGIN REPLICATION")):
        lines.append(
            f"SELECT 'CREATE ROLE {role} {attrs}' "  # noqa: S608
            f"WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') \\gexec"
        )
    for role, key, attrs in (
        (OWNER_ROLE, "owner", "LOGIN"),
        (app, "app", "LOGIN"),
        (cdc, "cdc", "LOGIN REPLICATION"),
    ):
        # token_urlsafe only yields [A-Za-z0-9_-]: safe inside a quoted literal.
        lines.append(f"ALTER ROLE {role} WITH {attrs} PASSWORD '{passwords[key]}';")
    lines += [
        f"SELECT 'CREATE DATABASE {DB_NAME} OWNER {OWNER_ROLE} ENCODING ''UTF8''' "  # noqa: S608
        f"WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '{DB_NAME}') \\gexec",
        f"ALTER DATABASE {DB_NAME} OWNER TO {OWNER_ROLE};",
        f"REVOKE ALL ON DATABASE {DB_NAME} FROM PUBLIC;",
        f"REVOKE CREATE ON DATABASE {DB_NAME} FROM {app}, {cdc};",
        f"GRANT CONNECT ON DATABASE {DB_NAME} TO {app}, {cdc};",
        *revoke_create_sql(app, cdc),
    ]
    return "\n".join(lines) + "\n"


def revoke_create_sql(app: str, cdc: str) -> list[str]:
    """psql lines, run as superuser: in the crawlstream database, neither PUBLIC nor the app and
    CDC roles may create objects in any schema. PostgreSQL 15+ no longer grants PUBLIC CREATE on
    ``public``; older versions do, so it is revoked explicitly (the schema's owner, a superuser
    there, can). The owner role keeps CREATE on ``public`` for the migrations."""
    # Role names passed _IDENT in bootstrap_sql: no injection path.
    return [
        f"\\connect {DB_NAME}",
        f"GRANT USAGE, CREATE ON SCHEMA public TO {OWNER_ROLE};",
        "DO $$ DECLARE s name; BEGIN"  # noqa: S608
        " FOR s IN SELECT nspname FROM pg_namespace"
        " WHERE nspname NOT LIKE 'pg\\_%' AND nspname <> 'information_schema' LOOP"
        f" EXECUTE format('REVOKE CREATE ON SCHEMA %I FROM PUBLIC, {app}, {cdc}', s);"
        " END LOOP; END $$;",
    ]


def publication_exists(layout: PgLayout, settings: Settings) -> bool:
    name = settings.postgres.publication
    if not _IDENT.match(name):
        raise StackError(f"publication name {name!r} is not a plain lower-case identifier")
    query = f"SELECT 1 FROM pg_publication WHERE pubname = '{name}';"  # noqa: S608 - checked by _IDENT
    out = psql(layout, query, db=DB_NAME)
    return out.strip() == "1"


def current_wal_lsn(layout: PgLayout) -> str:
    return psql(layout, "SELECT pg_current_wal_lsn();", db=DB_NAME).strip()


def slot_passed(layout: PgLayout, slot: str, lsn: str) -> str | None:
    """None once replication slot ``slot`` has confirmed WAL up to ``lsn`` (or does not exist),
    else where it stands."""
    if not _IDENT.match(slot) or not re.fullmatch(r"[0-9A-F]+/[0-9A-F]+", lsn):
        raise StackError(f"slot {slot!r} or LSN {lsn!r} is malformed")
    query = (
        f"SELECT confirmed_flush_lsn, confirmed_flush_lsn >= '{lsn}' FROM pg_replication_slots "  # noqa: S608
        f"WHERE slot_name = '{slot}';"  # both checked above
    )
    out = psql(layout, query, db=DB_NAME).strip()
    if not out or out.endswith("|t"):
        return None
    return f"slot {slot} has confirmed {out.split('|')[0]}, not yet {lsn}"


def url(settings: Settings, role: str, password: str | None) -> str:
    auth = f"{role}:{password}" if password else role
    return f"postgresql://{auth}@127.0.0.1:{settings.stack.postgres_port}/{DB_NAME}"
