"""Inserting many rows at once, as fast as the database driver allows.

SQLAlchemy's executemany runs every column's bind processing for every row; for the
registry's biggest writes (a fleet's login lines, a first fill's audit events) that is
most of the cost. ``insert_many`` sends the same values straight to the driver, each
distinct value converted once by the column type's own dialect processor.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection, Table


def insert_many(connection: Connection, table: Table, rows: list[dict[str, Any]]) -> None:
    """One executemany of ``rows`` (all with the same keys) straight to the database driver.

    SQLAlchemy's own executemany processes every parameter of every row (three timestamps
    per login row); here each column's bind processor runs once per distinct value, which
    makes inserting 100,000 rows several times faster. The values are exactly what
    SQLAlchemy would send.
    """
    if not rows:
        return
    dialect = connection.dialect
    names = list(rows[0])
    placeholder = {"qmark": "?", "format": "%s", "pyformat": "%s"}.get(dialect.paramstyle)
    if placeholder is None:  # pragma: no cover - every supported backend has one of these
        raise RuntimeError(f"unsupported DBAPI paramstyle {dialect.paramstyle}")
    quote = dialect.identifier_preparer.quote
    statement = (
        f"INSERT INTO {quote(table.name)} ({', '.join(quote(n) for n in names)}) "
        f"VALUES ({', '.join([placeholder] * len(names))})"
    )
    columns: list[list[Any]] = []
    for name in names:
        values = [row[name] for row in rows]
        # The dialect's own implementation of the column type, as SQLAlchemy would use.
        processor = table.c[name].type.dialect_impl(dialect).bind_processor(dialect)
        if processor is not None:
            convert = _memoized(processor)
            values = [None if v is None else convert(v) for v in values]
        columns.append(values)
    params = list(zip(*columns, strict=True))
    connection.exec_driver_sql(statement, params)


def _memoized(processor: Callable[[Any], Any]) -> Callable[[Any], Any]:
    cache: dict[Any, Any] = {}

    def convert(value: Any) -> Any:
        try:
            return cache[value]
        except KeyError:
            cache[value] = converted = processor(value)
            return converted

    return convert
