"""Adopting a fleet that already exists (pure): what a scan found, what it means, what to do.

``lines`` turns the authorized_keys files an ``adopt scan`` read into sightings (one per key
line, with where it was) and the lines sshd would not honour; ``report`` groups the
sightings by key and says which are registered, unknown, weak, shared, an offboarded
person's, never used, and what switching each host to ``exclusive`` would remove;
``suggest`` derives role grants from where claimed people's keys are today; ``guard`` is
the switch-over rule ``plan``, ``reconcile`` and the daemon apply. See docs/adoption.md.
"""
