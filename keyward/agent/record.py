"""Recording what the agent did: host state and one audit event per change on a host."""

from __future__ import annotations

import json

from keyward.agent.reconcile import HostResult
from keyward.registry.models import HostState
from keyward.registry.store import Registry

AUDIT_ACTIONS = {
    "add": "host.add",
    "remove": "host.remove",
}


def record_host(registry: Registry, actor: str, result: HostResult, run_id: str) -> None:
    """Update ``host_state`` and append audit events for every change made, in one transaction."""
    with registry.write(actor) as tx:
        state = tx.session.get(HostState, result.host.name) or HostState(host=result.host.name)
        state.environment = result.host.environment
        state.last_attempt = result.started
        state.last_run_id = run_id
        drift = 0
        files: dict[str, dict[str, str | None]] = json.loads(state.files or "{}")
        for file_result in result.files:
            plan = file_result.plan
            key = f"{plan.target.account}:{plan.target.pattern}"
            drift += sum(1 for c in plan.changes if c.action == "remove" and c.reason == "drift")
            if file_result.written:
                files[key] = {"path": plan.path, "sha256": file_result.confirmed_sha256}
                if plan.action == "fix-mode":
                    tx.audit(
                        "host.fix-mode",
                        result.host.name,
                        {"account": plan.target.account, "path": plan.path, "run_id": run_id},
                    )
                for change in plan.changes:
                    action = AUDIT_ACTIONS[change.action]
                    if change.action == "remove" and change.reason == "drift":
                        action = "host.drift-removed"
                    tx.audit(
                        action,
                        result.host.name,
                        {
                            "account": plan.target.account,
                            "path": plan.path,
                            "fingerprint": change.fingerprint,
                            "person": change.owner,
                            "reason": change.reason,
                            "run_id": run_id,
                        },
                    )
        state.files = json.dumps(files, sort_keys=True)
        state.drift_found = drift
        state.last_changes = result.changes
        if result.ok:
            state.last_success = result.finished
            state.last_error = None
        else:
            state.last_error = "; ".join(result.problems)[:2000]
        tx.session.add(state)
