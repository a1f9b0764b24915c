"""The one row layout (telemetry/layout.py) is what schema/tables.sql and schema/partitioned.sql create, column for
column."""

import locust  # noqa: F401, I001  (first: gevent must patch before psycopg is imported)

import psycopg
import pytest

from services.postgres import table_layout
from telemetry.generator import EngineerTelemetry, EventIds
from telemetry.layout import LAYOUT, TABLES, parse_row

COLUMNS_IN_DATABASE = """
SELECT column_name, data_type, is_nullable = 'YES'
FROM information_schema.columns
WHERE table_schema = current_schema() AND table_name = %s
ORDER BY ordinal_position
"""


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["plain", "partitioned"])
@pytest.mark.parametrize("table", TABLES)
def test_layout_equals_the_live_databases_columns(request, table, layout):
    """Both layouts' tables (schema/tables.sql, schema/partitioned.sql) have the row layout's columns."""
    conninfo = (
        request.getfixturevalue("postgres").dsn
        if layout == "plain"
        else request.getfixturevalue("partitioned_database")
    )
    with psycopg.connect(conninfo) as conn:
        live = [tuple(row) for row in conn.execute(COLUMNS_IN_DATABASE, [table])]
        assert table_layout(conn) == layout
    assert live == [(column.name, column.sql_type, column.nullable) for column in LAYOUT[table]]


def test_the_generator_composes_rows_of_the_layouts_columns(pools):
    telemetry = EngineerTelemetry(pools, seed=1, traces=5)
    for rows in telemetry.traces(EventIds(1)):
        for table, lines in rows.by_table():
            for line in lines:
                values = parse_row(line)
                assert len(values) == len(LAYOUT[table]), (table, line)
                assert all(
                    value is not None or column.nullable for column, value in zip(LAYOUT[table], values, strict=True)
                )
