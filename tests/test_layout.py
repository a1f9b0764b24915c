"""The one row layout (telemetry/layout.py) is what schema/tables.sql creates, column for column."""

import locust  # noqa: F401, I001  (first: gevent must patch before psycopg is imported)

import psycopg
import pytest

from telemetry.generator import EngineerTelemetry, EventIds
from telemetry.layout import LAYOUT, TABLES, parse_row

COLUMNS_IN_DATABASE = """
SELECT column_name, data_type, is_nullable = 'YES'
FROM information_schema.columns
WHERE table_schema = current_schema() AND table_name = %s
ORDER BY ordinal_position
"""


@pytest.mark.slow
@pytest.mark.parametrize("table", TABLES)
def test_layout_equals_the_live_databases_columns(postgres, table):
    with psycopg.connect(postgres.dsn) as conn:
        live = [tuple(row) for row in conn.execute(COLUMNS_IN_DATABASE, [table])]
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
