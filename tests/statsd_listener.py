"""
A real StatsD server for tests: a UDP socket on loopback that records every line Airflow's metrics send.

``airflow_statsd(listener)`` points Airflow's metrics at it the way a deployment does (``[metrics]`` through
``AIRFLOW__METRICS__*``, read by Airflow's conf at call time) and initializes them as the task runner's
``main()`` does; ``statsd_metrics()`` does both. ``[metrics] statsd_prefix`` (``airflow`` by default) is put
in front of every name by the StatsD client: ``imggen.failures`` arrives as ``airflow.imggen.failures``.
"""

from __future__ import annotations

import itertools
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

_sync_ids = itertools.count()


@dataclass(frozen=True)
class Sample:
    """
    One StatsD line: ``name:value|type[|@rate][|#tags]``.

    :param name: the metric name as sent (prefix included), InfluxDB-style ``,k=v`` tags removed
    :param value: an int when the line has one, else a float
    :param type: ``c``, ``g``, ``ms``, ``h``, ``s`` ...
    :param rate: the sample rate (1.0 when the line has none)
    :param tags: DogStatsD ``#k:v`` and InfluxDB ``,k=v`` tags
    """

    name: str
    value: int | float
    type: str
    rate: float = 1.0
    tags: dict[str, str] = field(default_factory=dict)


def parse_line(line: str) -> Sample:
    """Parse one StatsD line; raises ``ValueError`` when it is not one."""
    name, sep, rest = line.partition(":")
    fields = rest.split("|")
    if not sep or not name or len(fields) < 2 or not fields[1]:
        raise ValueError(f"not a StatsD line: {line!r}")
    raw = fields[0]
    value: int | float = int(raw) if raw.lstrip("+-").isdigit() else float(raw)
    rate, tags = 1.0, {}
    name, *influx = name.split(",")
    for tag in influx:
        key, _, tag_value = tag.partition("=")
        tags[key] = tag_value
    for extra in fields[2:]:
        if extra.startswith("@"):
            rate = float(extra[1:])
        elif extra.startswith("#"):
            for tag in extra[1:].split(","):
                key, _, tag_value = tag.partition(":")
                tags[key] = tag_value
        else:
            raise ValueError(f"not a StatsD line: {line!r}")
    return Sample(name, value, fields[1], rate, tags)


class StatsdListener:
    """
    A UDP socket bound to 127.0.0.1 on an ephemeral port; a daemon thread records every datagram, one
    :class:`Sample` per line (a datagram may hold several, separated by ``\\n``). Lines that are not StatsD
    are kept in :attr:`malformed`. Use it as a context manager, or call :meth:`close`.
    """

    def __init__(self) -> None:
        self.prefix = ""  # set by airflow_statsd: what the StatsD client puts in front of every name
        self.datagrams: list[bytes] = []
        self.lines: list[str] = []
        self.samples: list[Sample] = []
        self.malformed: list[str] = []
        self._changed = threading.Condition()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.settimeout(0.05)
        self.port: int = self._sock.getsockname()[1]
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="statsd-listener", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._closed.is_set():
            try:
                data = self._sock.recv(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._changed:
                self.datagrams.append(data)
                for line in data.decode("utf-8", errors="replace").split("\n"):
                    self.lines.append(line)
                    try:
                        self.samples.append(parse_line(line))
                    except ValueError:
                        self.malformed.append(line)
                self._changed.notify_all()

    def values(self, name: str) -> list[int | float]:
        """The values received so far under ``name`` (as sent: prefix included), oldest first."""
        with self._changed:
            return [sample.value for sample in self.samples if sample.name == name]

    def get(self, name: str) -> list[Sample]:
        """The samples received so far under ``name``."""
        with self._changed:
            return [sample for sample in self.samples if sample.name == name]

    def names(self) -> set[str]:
        with self._changed:
            return {sample.name for sample in self.samples}

    def wait_for(self, name: str, timeout: float = 5.0, count: int = 1) -> list[int | float]:
        """
        The values under ``name`` once at least ``count`` arrived.

        :raises AssertionError: none within ``timeout`` seconds, naming what did arrive
        """
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(found := [s.value for s in self.samples if s.name == name]) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{name} not received within {timeout}s; received: {self.lines}")
                self._changed.wait(left)
            return found

    def sync(self, timeout: float = 5.0) -> None:
        """
        Send a marker through Airflow's metrics and wait for it: everything Airflow sent before has arrived
        then (one client socket, loopback, in order), so a test can assert that something was *not* sent.
        """
        from airflow.sdk.observability import stats

        name = f"statsd_listener.sync.{next(_sync_ids)}"
        stats.incr(name)
        self.wait_for(f"{self.prefix}.{name}" if self.prefix else name, timeout)

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=5)
        self._sock.close()

    def __enter__(self) -> StatsdListener:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@contextmanager
def airflow_statsd(
    listener: StatsdListener, *, prefix: str = "airflow", influxdb_tags: bool = False
) -> Iterator[StatsdListener]:
    """
    Point Airflow's metrics at ``listener`` for the duration, as a deployment and the task runner do.

    Sets ``AIRFLOW__METRICS__*`` (StatsD on, host, port, prefix; Datadog off; no allow or block list),
    which Airflow's conf reads when asked, then ``stats.initialize(...)`` exactly as
    ``airflow.sdk.execution_time.task_runner.main`` does. Afterwards the environment is restored and the
    metrics are initialized with ``NoStatsLogger`` (what they are when nothing initialized them).

    :param prefix: ``[metrics] statsd_prefix``, which the StatsD client puts in front of every name
    :param influxdb_tags: ``[metrics] statsd_influxdb_enabled``: tags sent as ``name,k=v`` (else dropped)
    :raises RuntimeError: the ``statsd`` package is missing (Airflow would silently send nothing)
    """
    try:
        import statsd  # noqa: F401 - Airflow's StatsD backend needs it (apache-airflow[statsd])
    except ImportError as error:
        raise RuntimeError("the statsd package is missing: pip install 'statsd>=3.3.0'") from error
    from airflow.sdk._shared.observability.metrics.base_stats_logger import NoStatsLogger
    from airflow.sdk.configuration import conf
    from airflow.sdk.observability import stats
    from airflow.sdk.observability.metrics import stats_utils

    env = {
        "AIRFLOW__METRICS__STATSD_ON": "True",
        "AIRFLOW__METRICS__STATSD_HOST": "127.0.0.1",
        "AIRFLOW__METRICS__STATSD_PORT": str(listener.port),
        "AIRFLOW__METRICS__STATSD_PREFIX": prefix,
        "AIRFLOW__METRICS__STATSD_DATADOG_ENABLED": "False",
        "AIRFLOW__METRICS__STATSD_INFLUXDB_ENABLED": str(influxdb_tags),
        "AIRFLOW__METRICS__METRICS_ALLOW_LIST": "",
        "AIRFLOW__METRICS__METRICS_BLOCK_LIST": "",
    }
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    made: list[object] = []
    try:
        factory = stats_utils.get_stats_factory()

        def recording_factory() -> object:  # the same factory; kept to close its client's socket after
            made.append(backend := factory())
            return backend

        stats.initialize(
            factory=recording_factory,  # type: ignore[arg-type]
            export_legacy_names=conf.getboolean("metrics", "legacy_names_on"),
        )
        listener.prefix = prefix
        yield listener
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        stats.initialize(factory=NoStatsLogger, export_legacy_names=True)
        for backend in made:
            client = getattr(backend, "statsd", None)
            if client is not None:
                client.close()


@contextmanager
def statsd_metrics(*, prefix: str = "airflow", influxdb_tags: bool = False) -> Iterator[StatsdListener]:
    """A :class:`StatsdListener` with Airflow's metrics pointed at it: see :func:`airflow_statsd`."""
    with (
        StatsdListener() as listener,
        airflow_statsd(listener, prefix=prefix, influxdb_tags=influxdb_tags),
    ):
        yield listener
