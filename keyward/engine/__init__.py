"""The round as a library: what every driver (``reconcile``, ``plan``, ``offboard``, the daemon)
runs, so none of them re-implements it.

- ``inputs``: load a round's inputs (inventory, agent identity, registry snapshot, open
  offboarding cases, desired state);
- ``round``: run one round over a set of hosts (read, plan, apply, confirm, record), with the
  second pass after failure mode;
- ``recorder``: record finished hosts and their logins, with the one retry policy;
- ``batches``: hand finished hosts to a worker thread, one registry transaction per batch.

The engine prints nothing and imports no ``keyward.cli``: drivers pass callbacks for
progress and lock waits, and the clock, the sleep and the registry explicitly.
"""
