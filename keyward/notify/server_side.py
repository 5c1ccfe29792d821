"""The server's notifications: a request tells the role's approvers, a decision the
requester. Built and delivered by one background worker after the write committed, so a
slow or failing receiver never slows or fails the request, the approval or the denial.

The queue is bounded: past ``MAX_QUEUED`` waiting notifications a new one is dropped and
logged (``notification_failed``, ``error="queue full"``) rather than letting a dead
receiver grow the server's memory.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from keyward.clock import Clock
from keyward.inventory.notify_settings import NotifySettings
from keyward.inventory.settings import load_notify_settings
from keyward.logs import get_logger
from keyward.notify.deliver import Deliverer
from keyward.notify.message import Recipient, access_notification
from keyward.notify.recipients import approvers_of, recipient
from keyward.registry.access_rows import request_json
from keyward.registry.models import AccessRequest, Person, Role
from keyward.registry.store import Registry

MAX_QUEUED = 1000
CLOSE_GRACE = 10.0  # seconds a stopping server keeps delivering its queue


class ServerNotifier:
    def __init__(
        self,
        registry: Registry,
        deliverer: Deliverer,
        approvers: Mapping[str, tuple[str, ...]],
        clock: Clock,
    ) -> None:
        self.registry = registry
        self.deliverer = deliverer
        self.approvers = approvers
        self.clock = clock
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="keyward-notify")
        self._queued = 0
        self._stop_by: float | None = None
        self._lock = threading.Lock()

    def request_filed(self, request_id: int) -> None:
        """Tell the approvers of the request's role (never the requester)."""
        self._submit(request_id, decided=False)

    def request_decided(self, request_id: int) -> None:
        """Tell the requester that their request was approved or denied."""
        self._submit(request_id, decided=True)

    def close(self, grace: float = CLOSE_GRACE) -> None:
        """Deliver what is queued for up to ``grace`` seconds, log the rest as not sent.

        The one in flight at the deadline still finishes, bounded by its channels' own
        timeouts: a dead receiver cannot hold a server's stop for the whole queue.
        """
        self._stop_by = time.monotonic() + grace
        self._pool.shutdown(wait=True)

    def _submit(self, request_id: int, decided: bool) -> None:
        with self._lock:
            if self._queued >= MAX_QUEUED:
                get_logger(component="notify").warning(
                    "notification_failed", request_id=request_id, error="queue full"
                )
                return
            self._queued += 1
        self._pool.submit(self._run, request_id, decided)

    def _run(self, request_id: int, decided: bool) -> None:
        try:
            if self._stop_by is not None and time.monotonic() > self._stop_by:
                get_logger(component="notify").warning(
                    "notification_failed", request_id=request_id, error="server stopping"
                )
                return
            self._send(request_id, decided)
        except Exception as exc:  # a notification never takes the server down
            get_logger(component="notify").error(
                "notification_failed",
                request_id=request_id,
                error=f"{type(exc).__name__}: {exc}",
                exc_info=True,
            )
        finally:
            with self._lock:
                self._queued -= 1

    def _send(self, request_id: int, decided: bool) -> None:
        now = self.clock()
        with self.registry.read() as session:
            request = session.get(AccessRequest, request_id)
            if request is None:
                return
            person = session.get(Person, request.person_id)
            role = session.get(Role, request.role_id)
            assert person is not None and role is not None
            row = request_json(request, person, role)
            if decided:
                event = "access_approved" if request.status == "approved" else "access_denied"
                recipients: tuple[Recipient, ...] = (recipient(person),)
            else:
                event = "access_requested"
                recipients = approvers_of(
                    session, self.approvers, role.name, now, exclude=person.username
                )
        self.deliverer.deliver(access_notification(event, row, recipients, now))


def notifier_for(
    root: Path | None,
    registry: Registry,
    approvers: Mapping[str, tuple[str, ...]],
    clock: Clock,
) -> ServerNotifier | None:
    """The notifier ``[notify]`` in ``root``'s keyward.toml asks for; None without channels.

    A secret file that cannot be used stops the server at start (``UsageError``), not at
    the first notification.
    """
    settings = load_notify_settings(root) if root is not None else NotifySettings()
    if not settings.channels:
        return None
    return ServerNotifier(registry, Deliverer.from_settings(settings), approvers, clock)
