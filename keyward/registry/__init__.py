"""The registry: people, their personal keys, roles, grants and the audit chain.

Only this package talks to the database.  Everything else gets plain frozen
values out of it (see ``keyward.registry.snapshot``).
"""
