"""A real Mosquitto broker per test, on a free port, that a test can stop and restart."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MISSING = (
    "the collector tests run a real Mosquitto broker, and no `mosquitto` binary was found: "
    "install it (Debian/Ubuntu: apt install mosquitto; macOS: brew install mosquitto)"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Broker:
    """``mosquitto`` on 127.0.0.1:<free port>, with unlimited queues for persistent sessions.

    ``persistence`` keeps sessions and queued messages across :meth:`restart`; without it a
    restart forgets every session, which is what a collector must survive too.
    """

    def __init__(
        self,
        directory: Path,
        *,
        persistence: bool = False,
        tls: bool = False,
        users: dict[str, str] | None = None,
    ) -> None:
        self.directory = directory
        self.port = free_port()
        self.persistence = persistence
        self.config = directory / "mosquitto.conf"
        self.ca_file: Path | None = make_certificates(directory) if tls else None
        lines = [
            f"listener {self.port} 127.0.0.1",
            f"allow_anonymous {'false' if users else 'true'}",
            "max_queued_messages 0",
            "max_inflight_messages 20",
            f"persistence {'true' if persistence else 'false'}",
            f"persistence_location {directory}/",
            f"log_dest file {directory}/mosquitto.log",
        ]
        if os.geteuid() == 0:  # else mosquitto drops to its own user, who cannot read tmp dirs
            lines.append("user root")
        if tls:
            lines += [
                f"cafile {directory / 'ca.crt'}",
                f"certfile {directory / 'server.crt'}",
                f"keyfile {directory / 'server.key'}",
            ]
        if users:
            passwd = directory / "passwd"
            for user, password in users.items():
                flags = ["-b"] if passwd.exists() else ["-c", "-b"]
                subprocess.run(
                    ["mosquitto_passwd", *flags, str(passwd), user, password],
                    check=True,
                    capture_output=True,
                )
            lines.append(f"password_file {passwd}")
        self.config.write_text("\n".join(lines) + "\n")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if not Path(MOSQUITTO).is_file():
            raise RuntimeError(MISSING)
        self.process = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                if self.process.poll() is not None:
                    raise RuntimeError(f"mosquitto exited: {self.log()}") from None
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen on {self.port}: {self.log()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None

    def restart(self, downtime_s: float = 0.5) -> None:
        self.stop()
        time.sleep(downtime_s)
        self.start()

    def log(self) -> str:
        path = self.directory / "mosquitto.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""


def make_certificates(directory: Path) -> Path:
    """A throw-away CA and a server certificate for 127.0.0.1 (openssl); returns the CA file."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=directory)

    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=meterlake test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    )
    openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    )
    (directory / "san.ext").write_text("subjectAltName = IP:127.0.0.1\n")
    openssl(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "san.ext",
        "-out",
        "server.crt",
    )
    return directory / "ca.crt"
