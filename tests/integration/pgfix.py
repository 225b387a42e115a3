"""pgfix - a throwaway PostgreSQL 15 (Debian's `postgresql` package) for the
fleet tests and the sink bench.

initdb/pg_ctl run as the unprivileged `postgres` user (when we are root) in a
temp dir made accessible to it, on a free loopback port, with password
authentication (scram-sha-256) for TCP and for the socket. stop() (also
registered with atexit) stops the server by its PID and removes the dir.
"""

import atexit
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time

PG_BINDIRS = ["/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin"]


def _bindir():
    for d in PG_BINDIRS:
        if os.path.exists(os.path.join(d, "initdb")):
            return d
    p = shutil.which("initdb")
    if p:
        return os.path.dirname(p)
    raise RuntimeError("PostgreSQL server binaries not found (apt-get install -y postgresql)")


def _free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Postgres:
    def __init__(self, user="airlock", password="pg-S3cret-p4ss-9f1e", db="audit", fsync=False,
                 ssl=None):
        """ssl: (cert_pem, key_pem) to serve TLS too (clients choose with sslmode)."""
        self.bindir = _bindir()
        self.user, self.password, self.db = user, password, db
        self.tmp = tempfile.mkdtemp(prefix="airlock-pg-")
        os.chmod(self.tmp, 0o755)
        self.data = os.path.join(self.tmp, "data")
        self.sock = os.path.join(self.tmp, "sock")
        self.logfile = os.path.join(self.tmp, "postgres.log")
        self.port = _free_port()
        self.fsync = fsync
        self.pid = None
        self._uid = self._gid = None
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            self._uid, self._gid = pw.pw_uid, pw.pw_gid
        os.makedirs(self.sock)
        if self._uid is not None:
            os.chown(self.tmp, self._uid, self._gid)
            os.chown(self.sock, self._uid, self._gid)
        pwfile = os.path.join(self.tmp, "pwfile")
        with open(pwfile, "w") as fh:
            fh.write(password + "\n")
        if self._uid is not None:
            os.chown(pwfile, self._uid, self._gid)
        atexit.register(self.stop)
        self._run(["initdb", "-D", self.data, "-U", user, "--pwfile", pwfile, "-E", "UTF8",
                   "--no-locale", "--auth=scram-sha-256", "--no-sync"], timeout=120)
        os.unlink(pwfile)
        with open(os.path.join(self.data, "postgresql.conf"), "a") as fh:
            fh.write("listen_addresses = '127.0.0.1'\nport = %d\nunix_socket_directories = '%s'\n"
                     "fsync = %s\nmax_connections = 50\nshared_buffers = 64MB\n"
                     "logging_collector = off\n"
                     % (self.port, self.sock, "on" if fsync else "off"))
            if ssl:
                for src, name in zip(ssl, ("server.crt", "server.key")):
                    dst = os.path.join(self.data, name)
                    shutil.copyfile(src, dst)
                    os.chmod(dst, 0o600)
                    if self._uid is not None:
                        os.chown(dst, self._uid, self._gid)
                fh.write("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n")
        self.start()
        self.psql("CREATE DATABASE %s" % db, db="postgres")

    def _demote(self):
        if self._gid is not None:
            os.setgid(self._gid)
            os.setuid(self._uid)

    def _run(self, argv, timeout=60):
        argv = [os.path.join(self.bindir, argv[0])] + argv[1:]
        p = subprocess.run(argv, preexec_fn=self._demote, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=timeout, cwd=self.tmp)
        if p.returncode != 0:
            raise RuntimeError("%s failed: %s" % (argv[0], p.stdout.decode(errors="replace")))
        return p.stdout.decode(errors="replace")

    def start(self, timeout=30):
        self._run(["pg_ctl", "-D", self.data, "-l", self.logfile, "-w", "-t", str(timeout),
                   "start"], timeout=timeout + 10)
        with open(os.path.join(self.data, "postmaster.pid")) as fh:
            self.pid = int(fh.readline().strip())

    def stop_server(self, mode="fast"):
        """Stops the server (the fleet test's outage); start() brings it back."""
        if self.pid is None:
            return
        try:
            self._run(["pg_ctl", "-D", self.data, "-m", mode, "-w", "-t", "30", "stop"], timeout=40)
        except (RuntimeError, subprocess.TimeoutExpired):
            try:
                os.kill(self.pid, signal.SIGKILL)
            except OSError:
                pass
        self.pid = None

    def stop(self):
        if self.pid is not None:
            self.stop_server("immediate")
        if self.tmp and os.path.isdir(self.tmp):
            shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp = None

    def uri(self, password=None, db=None):
        return "postgresql://%s:%s@127.0.0.1:%d/%s" % (
            self.user, self.password if password is None else password, self.port, db or self.db)

    def psql(self, sql, db=None, timeout=60):
        """Runs sql with psql over TCP; returns the rows as lists of strings."""
        env = dict(os.environ, PGPASSWORD=self.password)
        p = subprocess.run([os.path.join(self.bindir, "psql"), "-X", "-q", "-A", "-t", "-F", "\t",
                            "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", str(self.port),
                            "-U", self.user, "-d", db or self.db, "-c", sql],
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=timeout)
        if p.returncode != 0:
            raise RuntimeError("psql: %s" % p.stderr.decode(errors="replace"))
        out = p.stdout.decode()
        return [line.split("\t") for line in out.splitlines() if line != ""]

    def wait_ready(self, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.psql("SELECT 1")
                return
            except RuntimeError:
                time.sleep(0.1)
        raise RuntimeError("postgres not ready")
