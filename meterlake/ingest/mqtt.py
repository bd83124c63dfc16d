"""The MQTT collector: at-least-once from the broker into the spool.

A message is acknowledged to the broker only after it is durably in the spool. paho-mqtt's
network thread hands each message to an in-memory queue; a commit thread appends what has
queued up to the spool as one write, fsyncs once (a group commit) and then acknowledges the
messages, in the order they arrived. With QoS 1 and a persistent session the broker resends
whatever was not acknowledged, so a crash anywhere loses nothing.

When the spool's disk is full, nothing more is acknowledged: the broker stops sending once its
in-flight window is full, keeps the rest, and the collector retries until space returns.
Every (re)connect subscribes again, so a broker that restarted without its sessions does not
leave a connected but silent consumer.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from meterlake.config.settings import MqttConnection, MqttSettings
from meterlake.ingest.spool import Envelope, Spool, SpoolFullError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MqttHealth:
    """What a collector has done so far (a snapshot)."""

    name: str
    connected: bool = False
    connects: int = 0
    messages: int = 0
    acknowledged: int = 0
    pending: int = 0
    spool_full: bool = False
    last_message_at: float | None = None
    """Wall-clock seconds of the last message."""


def channel_name(settings: MqttSettings) -> str:
    """The spool channel of a subscription: names its decoder at flush time."""
    return f"mqtt:{settings.name}"


class MqttCollector:
    """Subscribe to ``settings.topics`` and spool every message before acknowledging it.

    Parameters
    ----------
    settings
        The broker connection and topics.
    spool
        Where messages go (shared with other collectors).
    commit_delay_s
        Extra wait before each group commit, to gather more messages per fsync on slow
        media (SD cards) [s]; 0: commit as soon as the previous commit is done.
    clock
        Wall-clock seconds (for health only), injectable.
    """

    def __init__(
        self,
        settings: MqttSettings,
        spool: Spool,
        *,
        commit_delay_s: float = 0.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.spool = spool
        self.channel = channel_name(settings)
        self.commit_delay_s = commit_delay_s
        self._clock = clock
        self._queue: list[tuple[Envelope, int, int]] = []  # envelope, mid, qos
        self._cond = threading.Condition()
        self._stopping = False
        self._health = MqttHealth(name=settings.name)
        self._committer: threading.Thread | None = None
        self.client = make_client(settings, manual_ack=True)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message

    # lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Connect (in the background, retrying) and start taking messages."""
        connect_in_background(self.client, self.settings)
        self._committer = threading.Thread(
            target=self._commit_loop, name=f"mqtt-commit-{self.settings.name}", daemon=True
        )
        self._committer.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Commit what has arrived, then disconnect; the broker keeps what is unacknowledged."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._committer is not None:
            self._committer.join(timeout_s)
        self.client.disconnect()
        self.client.loop_stop()

    def health(self) -> MqttHealth:
        with self._cond:
            return replace(self._health, pending=len(self._queue))

    # paho callbacks (network thread) -------------------------------------------------------

    def _on_connect(
        self,
        client: paho.Client,
        _userdata: object,
        _flags: object,
        reason_code: Any,
        _properties: object,
    ) -> None:
        if reason_code.is_failure:
            log.error("mqtt %s: connection refused: %s", self.settings.name, reason_code)
            return
        topics: list[tuple[str, int]] = [(t, self.settings.qos) for t in self.settings.topics]
        if topics:
            client.subscribe(topics)
        with self._cond:
            self._health = replace(self._health, connected=True, connects=self._health.connects + 1)
        log.info(
            "mqtt %s: connected to %s:%s, subscribed to %s",
            self.settings.name,
            self.settings.host,
            self.settings.port,
            ", ".join(self.settings.topics) or "nothing",
        )

    def _on_subscribe(
        self,
        _client: paho.Client,
        _userdata: object,
        _mid: int,
        reason_codes: list[Any],
        _properties: object,
    ) -> None:
        refused = [str(rc) for rc in reason_codes if rc.is_failure]
        if refused:
            log.error("mqtt %s: subscription refused: %s", self.settings.name, ", ".join(refused))

    def _on_disconnect(
        self,
        _client: paho.Client,
        _userdata: object,
        _flags: object,
        reason_code: Any,
        _properties: object,
    ) -> None:
        with self._cond:
            self._health = replace(self._health, connected=False)
        if not self._stopping:
            log.warning("mqtt %s: disconnected (%s); reconnecting", self.settings.name, reason_code)

    def _on_message(self, _client: paho.Client, _userdata: object, msg: paho.MQTTMessage) -> None:
        now = self._clock()
        envelope = Envelope(self.channel, msg.topic, bytes(msg.payload), int(now * 1_000_000))
        with self._cond:
            self._queue.append((envelope, msg.mid, msg.qos))
            self._health = replace(
                self._health, messages=self._health.messages + 1, last_message_at=now
            )
            if len(self._queue) == 1:
                self._cond.notify()

    # commit thread -------------------------------------------------------------------------

    def _commit_loop(self) -> None:
        # Group commit: while one append + fsync runs, the next messages gather in the queue and
        # go in the next single write, so the fsync rate adapts to the disk by itself.
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait(1.0)
            if self.commit_delay_s and not self._stopping:
                time.sleep(self.commit_delay_s)  # gather more per fsync on slow media
            with self._cond:
                batch, self._queue = self._queue, []
                stopping = self._stopping
            if batch and not self._commit(batch):
                with self._cond:  # keep them, in order, ahead of what came since
                    self._queue = batch + self._queue
                if stopping:
                    return
                time.sleep(1.0)
                continue
            if stopping:
                return

    def _commit(self, batch: list[tuple[Envelope, int, int]]) -> bool:
        """Spool ``batch`` durably, then acknowledge it; False if the spool is full."""
        try:
            self.spool.append([envelope for envelope, _mid, _qos in batch])
            self.spool.sync()
        except SpoolFullError as exc:
            with self._cond:
                first = not self._health.spool_full
                self._health = replace(self._health, spool_full=True)
            if first:
                log.error(
                    "mqtt %s: %s; not acknowledging (the broker keeps the messages) until "
                    "space returns",
                    self.settings.name,
                    exc,
                )
            return False
        for _envelope, mid, qos in batch:
            if qos > 0:
                self.client.ack(mid, qos)
        with self._cond:
            if self._health.spool_full:
                log.warning("mqtt %s: spool has space again; acknowledging", self.settings.name)
            self._health = replace(
                self._health,
                acknowledged=self._health.acknowledged + len(batch),
                spool_full=False,
            )
        return True


def make_client(conn: MqttConnection, *, manual_ack: bool) -> paho.Client:
    """A paho client for ``conn``: persistent session, credentials, TLS, reconnect back-off."""
    v5 = conn.protocol == "5"
    client = paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=conn.client_id,
        clean_session=None if v5 else False,
        protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
        manual_ack=manual_ack,
    )
    if conn.username is not None:
        client.username_pw_set(conn.username, conn.password)
    if conn.tls or conn.tls_ca_file is not None:
        client.tls_set(
            ca_certs=str(conn.tls_ca_file) if conn.tls_ca_file else None,
            certfile=str(conn.tls_certfile) if conn.tls_certfile else None,
            keyfile=str(conn.tls_keyfile) if conn.tls_keyfile else None,
            cert_reqs=ssl.CERT_REQUIRED,
        )
    client.reconnect_delay_set(min_delay=1, max_delay=30)
    return client


def connect_in_background(client: paho.Client, conn: MqttConnection) -> None:
    """Connect (retrying with back-off) from paho's own network thread."""
    clean_start: Any = False if conn.protocol == "5" else paho.MQTT_CLEAN_START_FIRST_ONLY
    client.connect_async(conn.host, conn.port, keepalive=conn.keepalive_s, clean_start=clean_start)
    client.loop_start()
