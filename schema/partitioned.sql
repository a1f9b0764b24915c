-- firehose's partitioned layout (--layout partitioned): spans, metrics and logs range-partitioned on their time
-- column, one partition per interval. Run it before schema/tables.sql, whose CREATE TABLE IF NOT EXISTS then leaves
-- these three alone and adds the bookkeeping:
--   psql -f schema/partitioned.sql -f schema/tables.sql
--   psql -c "SELECT firehose_create_partitions(now() - interval '3 days', now() + interval '1 day', interval '1 day')"
-- Native declarative partitioning (no extension). The primary key must hold the partition column, so it is
-- (event_id, <time>): a retried row carries the same time, so it still cannot be stored twice; the writers' ON
-- CONFLICT DO NOTHING names no target, so one statement fits both layouts. No DEFAULT partition: it would refuse
-- DETACH PARTITION ... CONCURRENTLY (retention), and a row whose time has no partition fails alone (SQLSTATE 23514)
-- instead of landing where nothing drops it. Columns as in schema/tables.sql (its comments say what each holds).

CREATE TABLE IF NOT EXISTS spans (
    event_id        bigint      NOT NULL,
    trace_id        text        NOT NULL,
    span_id         text        NOT NULL,
    parent_span_id  text,
    service_name    text        NOT NULL,
    name            text        NOT NULL,
    kind            smallint    NOT NULL,
    start_time      timestamptz NOT NULL,
    end_time        timestamptz NOT NULL,
    duration_ms     double precision NOT NULL,
    status_code     smallint    NOT NULL,
    status_message  text,
    attributes      jsonb       NOT NULL,
    PRIMARY KEY (event_id, start_time)
) PARTITION BY RANGE (start_time);

CREATE TABLE IF NOT EXISTS metrics (
    event_id        bigint      NOT NULL,
    name            text        NOT NULL,
    service_name    text        NOT NULL,
    time            timestamptz NOT NULL,
    value           double precision NOT NULL,
    unit            text        NOT NULL,
    metric_type     text        NOT NULL,
    trace_id        text,
    span_id         text,
    attributes      jsonb       NOT NULL,
    PRIMARY KEY (event_id, time)
) PARTITION BY RANGE (time);

CREATE TABLE IF NOT EXISTS logs (
    event_id        bigint      NOT NULL,
    time            timestamptz NOT NULL,
    severity_number smallint    NOT NULL,
    severity_text   text        NOT NULL,
    service_name    text        NOT NULL,
    trace_id        text,
    span_id         text,
    body            text        NOT NULL,
    attributes      jsonb       NOT NULL,
    PRIMARY KEY (event_id, time)
) PARTITION BY RANGE (time);

-- One partition of each table per `step` covering [from_time, to_time), aligned to `step` since the Unix epoch
-- (a day's partitions start at midnight UTC), named <table>_pYYYYMMDD_HH24MI (UTC) by their lower bound.
-- Idempotent: existing partitions are kept, so every run can call it for the times it will write. Partitions of
-- another width (an earlier run's --partition-interval, or made by hand) are kept too: a step they cover in part
-- gets partitions for its gaps only, so no row's time is left without one. Returns the partitions it created.
CREATE OR REPLACE FUNCTION firehose_create_partitions(from_time timestamptz, to_time timestamptz, step interval)
RETURNS SETOF text LANGUAGE plpgsql AS $$
DECLARE
    step_s  double precision := extract(epoch FROM step);  -- '1 day' as 86,400 s, whatever the zone
    first   timestamptz := to_timestamp(floor(extract(epoch FROM from_time) / step_s) * step_s);
    last    timestamptz := to_timestamp(ceil(extract(epoch FROM to_time) / step_s) * step_s);
    gap     timestamptz;  -- from here on, no partition of the table is known yet
    upto    timestamptz;
    taken   record;
    part    text;
    tbl     text;
BEGIN
    IF step_s <= 0 THEN
        RAISE EXCEPTION 'firehose_create_partitions: the step must be longer than 0, not %', step;
    END IF;
    FOREACH tbl IN ARRAY ARRAY['spans', 'metrics', 'logs'] LOOP
        gap := first;
        -- the table's partitions within [first, last), in order, then the range's end (so its last gap is filled)
        FOR taken IN
            SELECT low, high FROM (
                -- FROM ('...') TO ('...'); MINVALUE / MAXVALUE (hand-made partitions) as unbounded
                SELECT coalesce((regexp_match(bound, $re$FROM \('([^']+)'\)$re$))[1]::timestamptz, '-infinity') AS low,
                       coalesce((regexp_match(bound, $re$TO \('([^']+)'\)$re$))[1]::timestamptz, 'infinity') AS high
                FROM (SELECT pg_get_expr(c.relpartbound, c.oid) AS bound
                      FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                      WHERE i.inhparent = tbl::regclass) AS parts
                WHERE bound <> 'DEFAULT'
            ) AS bounds
            WHERE low < last AND high > first
            UNION ALL SELECT last, last
            ORDER BY 1
        LOOP
            WHILE gap < taken.low LOOP  -- one partition per step, cut short where a partition already starts
                upto := least(to_timestamp((floor(extract(epoch FROM gap) / step_s) + 1) * step_s), taken.low);
                part := format('%s_p%s', tbl, to_char(gap AT TIME ZONE 'UTC', 'YYYYMMDD_HH24MI'));
                EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)', part, tbl, gap, upto);
                RETURN NEXT part;
                gap := upto;
            END LOOP;
            gap := greatest(gap, taken.high);
        END LOOP;
    END LOOP;
END
$$;
