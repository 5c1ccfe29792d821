"""Alembic migrations for the registry schema (run by ``keyward init``)."""
