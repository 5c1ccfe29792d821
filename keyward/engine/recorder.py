"""Recording a round's finished hosts, and what happens when the registry will not take them.

A host's changes are already made when they are recorded, so a failed record must never
lose its audit events: :class:`Recorder` keeps every result it could not record, and
:meth:`Recorder.retry` tries them again under :data:`RETRY` (the one retry policy) before
giving up with :class:`~keyward.errors.RegistryUnavailable`. The daemon does not wait for
the registry: its next verification pass records the changes late (``recorded-late``).

Login events are stored after the host state, in a transaction of their own: when that
fails the read positions are not saved either, so the next round reads the lines again.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from keyward.clock import Clock
from keyward.errors import KeywardError, RegistryUnavailable

if TYPE_CHECKING:
    from keyward.agent.reconcile import HostResult
    from keyward.engine.inputs import RoundInputs
    from keyward.inventory.policy import PolicySettings
    from keyward.registry.store import Registry
    from keyward.state import RegistrySnapshot


@dataclass(frozen=True)
class RetryPolicy:
    """How often, and how long apart, unrecorded hosts are tried again."""

    attempts: int = 10
    max_delay: float = 30.0

    def delay(self, attempt: int) -> float:
        """Seconds after failed attempt ``attempt`` (0-based): 1, 2, 4, ... up to the max."""
        return min(self.max_delay, 2.0**attempt)


RETRY = RetryPolicy()


@dataclass(frozen=True)
class LoginSink:
    """What storing a round's logins needs: attribution, the policy, the service keys."""

    snapshot: RegistrySnapshot
    policy: PolicySettings
    known_keys: Mapping[str, str]

    @classmethod
    def of(cls, inputs: RoundInputs) -> LoginSink:
        """Logins attributed with the round's snapshot, policy and service keys."""
        from keyward.logins import service_keys

        known = service_keys(inputs.inventory, inputs.agent_key.fingerprint)
        return cls(inputs.snapshot, inputs.inventory.policy, known)


@dataclass
class Recorder:
    """Records batches of a round's results: host state and audit events, then logins.

    ``record`` never raises for the registry being unavailable: it logs and keeps the
    batch (``unrecorded``) or, for logins, leaves the positions unsaved. Alerts raised
    and people put into failure mode accumulate for the driver.
    """

    registry: Registry
    actor: str
    clock: Clock
    run_id: str
    case_ids: tuple[int, ...]
    log: Any
    logins: LoginSink | None = None
    unrecorded: list[HostResult] = field(default_factory=list)
    alerts: list[int] = field(default_factory=list)
    failure_modes: int = 0
    # Hosts whose logins were stored in this round: their new read positions now hold.
    logins_stored: list[HostResult] = field(default_factory=list)

    def record(self, batch: list[HostResult]) -> None:
        """Host state and audit first (one transaction), then the batch's logins."""
        if not self._record_hosts(batch):
            # The hosts are already written; never lose their audit record: retry later.
            self.unrecorded.extend(batch)
            return
        self._record_logins(batch)

    def _record_hosts(self, batch: list[HostResult], quiet: bool = False) -> bool:
        """Whether the batch was recorded; ``quiet`` retries log nothing more."""
        from keyward.registry.record import record_hosts

        try:
            record_hosts(self.registry, self.actor, batch, self.run_id, self.case_ids)
        except KeywardError as exc:
            if not quiet:
                self.log.error(
                    "record_failed", hosts=[r.host.name for r in batch], error=exc.message
                )
            return False
        return True

    def _record_logins(self, batch: list[HostResult]) -> None:
        from keyward.registry.attribution import record_logins

        with_logins = [r for r in batch if r.auth is not None and r.auth.position is not None]
        if self.logins is None or not with_logins:
            return
        try:
            collected = record_logins(
                self.registry,
                self.actor,
                with_logins,
                self.logins.snapshot,
                self.logins.policy,
                self.clock(),
                self.logins.known_keys,
            )
        except KeywardError as exc:
            # Not stored means the read positions were not saved: the next round re-reads.
            self.log.error(
                "logins_record_failed", hosts=[r.host.name for r in with_logins], error=exc.message
            )
            return
        self.logins_stored.extend(with_logins)
        self.alerts.extend(collected.alerts)
        self.failure_modes += collected.failure_modes

    def retry(self, sleep: Callable[[float], None], policy: RetryPolicy = RETRY) -> None:
        """Record what could not be recorded, host by host, waiting between attempts.

        Raises :class:`RegistryUnavailable` naming the hosts still unrecorded: they were
        reconciled, and the user must know their audit record is missing.
        """
        for attempt in range(policy.attempts):
            if not self.unrecorded:
                return
            pending, self.unrecorded = self.unrecorded, []
            for result in pending:
                if not self._record_hosts([result], quiet=True):
                    self.unrecorded.append(result)
            if self.unrecorded and attempt + 1 < policy.attempts:
                sleep(policy.delay(attempt))
        if self.unrecorded:
            names = ", ".join(r.host.name for r in self.unrecorded)
            raise RegistryUnavailable(
                f"hosts {names} were reconciled but their changes could not be recorded in the "
                "registry; see the log (record_failed) and run keyward reconcile again"
            )

    def notify(self, command: str | None) -> None:
        """Log the alerts raised so far and hand them to the ``alert_command``."""
        from keyward.registry.attribution import notify

        if self.alerts:
            notify(self.registry, self.actor, tuple(self.alerts), command)
            self.alerts = []
