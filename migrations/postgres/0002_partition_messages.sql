-- Messages partitioned by week (PostgreSQL only), so that expiry drops a whole week's table
-- instead of deleting its rows one by one (docs/DESIGN.md "Partitions").
--
-- No row is copied: the existing table becomes the DEFAULT partition, `messages_default`, and
-- keeps every row it holds (they expire from it in rounds of rows, as before). A CHECK
-- constraint bounds it below the first week partition, so that attaching a later week never
-- has to scan it. From that week on, each week is its own table, `messages_YYYYMMDD` (the
-- Monday, UTC), created ahead by the nodes (src/store/partitions.rs) with its own indexes.
--
-- A unique index on a partitioned table must contain the partition key, so the flat table's
-- two guards move: (conv_id, seq) is unique within a week, and order across weeks is fenced by
-- a compare-and-set on conversations.last_seq in every commit; mids are filed in
-- `message_mids`, a registry partitioned by thirteen weeks of filing time, unique within a span,
-- where the commit looks them up before storing a message (a few spans, not every week; weeks
-- have no mid index at all).

-- Proving the old rows lie below the first week scans the old table once.
SET LOCAL statement_timeout = 0;

DO $$
DECLARE
    day_ms CONSTANT BIGINT := 86400000;
    week_ms CONSTANT BIGINT := 7 * 86400000;
    -- Weeks start on Monday 00:00 UTC: 1969-12-29, three days before the epoch, was one.
    first_monday CONSTANT BIGINT := -3 * 86400000;
    now_ms BIGINT := (extract(epoch FROM clock_timestamp()) * 1000)::BIGINT;
    newest BIGINT;
    boundary BIGINT;
    first_week TEXT;
    -- The registry's spans: thirteen weeks from the same Monday.
    span_ms CONSTANT BIGINT := 91::BIGINT * 86400000;
    first_span BIGINT;
    span_table TEXT;
BEGIN
    ALTER TABLE messages RENAME TO messages_default;
    ALTER INDEX messages_pkey RENAME TO messages_default_pkey;
    ALTER INDEX messages_mid RENAME TO messages_default_mid;
    ALTER INDEX messages_at RENAME TO messages_default_at;
    ALTER INDEX messages_deleted_at RENAME TO messages_default_deleted_at;

    -- The first week partition starts this week, or the week after the newest row kept.
    boundary := first_monday + floor((now_ms - first_monday)::NUMERIC / week_ms)::BIGINT * week_ms;
    SELECT max(at) INTO newest FROM messages_default;
    IF newest IS NOT NULL AND newest >= boundary THEN
        boundary := first_monday
            + (floor((newest - first_monday)::NUMERIC / week_ms)::BIGINT + 1) * week_ms;
    END IF;
    EXECUTE format(
        'ALTER TABLE messages_default ADD CONSTRAINT messages_default_before CHECK (at < %s)',
        boundary);

    CREATE TABLE messages (
        conv_id    UUID NOT NULL,
        seq        BIGINT NOT NULL,
        mid        UUID NOT NULL,
        sender     UUID NOT NULL,
        kind       TEXT NOT NULL,
        -- Kept after a soft delete for the audit period, then erased (set to NULL).
        body       TEXT,
        at         BIGINT NOT NULL,
        deleted_at BIGINT
    ) PARTITION BY RANGE (at);
    ALTER TABLE messages ATTACH PARTITION messages_default DEFAULT;

    -- The first week, as the nodes create the others (src/store/partitions.rs).
    first_week := 'messages_' || to_char(to_timestamp(boundary / 1000) AT TIME ZONE 'UTC', 'YYYYMMDD');
    EXECUTE format('CREATE TABLE %I (LIKE messages INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', first_week);
    EXECUTE format('CREATE UNIQUE INDEX %I ON %I (conv_id, seq)', first_week || '_seq', first_week);
    EXECUTE format('CREATE INDEX %I ON %I (deleted_at) WHERE deleted_at IS NOT NULL',
        first_week || '_deleted_at', first_week);
    EXECUTE format('ALTER TABLE messages ATTACH PARTITION %I FOR VALUES FROM (%s) TO (%s)',
        first_week, boundary, boundary + week_ms);

    -- Every mid stored from now on, by when it was filed; the rows kept from before are found
    -- through messages_default's own mid index.
    CREATE TABLE message_mids (
        mid     UUID NOT NULL,
        conv_id UUID NOT NULL,
        sender  UUID NOT NULL,
        seq     BIGINT NOT NULL,
        at      BIGINT NOT NULL,
        -- When the message was stored (the node's clock): a back-dated message files now.
        filed   BIGINT NOT NULL
    ) PARTITION BY RANGE (filed);
    first_span := first_monday + floor((now_ms - first_monday)::NUMERIC / span_ms)::BIGINT * span_ms;
    span_table := 'message_mids_' || to_char(to_timestamp(first_span / 1000) AT TIME ZONE 'UTC', 'YYYYMMDD');
    EXECUTE format('CREATE TABLE %I (LIKE message_mids INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', span_table);
    EXECUTE format('CREATE UNIQUE INDEX %I ON %I (mid)', span_table || '_mid', span_table);
    EXECUTE format('ALTER TABLE message_mids ATTACH PARTITION %I FOR VALUES FROM (%s) TO (%s)',
        span_table, first_span, first_span + span_ms);
END $$;
