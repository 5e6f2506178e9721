-- chat-backend schema, SQLite dialect (migrations/postgres holds the same invariants).
-- UUIDs are 16-byte BLOBs, booleans INTEGER 0/1, times INTEGER milliseconds.

CREATE TABLE conversations (
    id            BLOB PRIMARY KEY,
    kind          TEXT NOT NULL CHECK (kind IN ('direct', 'group', 'business')),
    name          TEXT,
    business      BLOB,
    -- One direct conversation per pair of users ('direct:<lo>:<hi>') and one business
    -- conversation per customer and business; NULL (never equal) for groups.
    unique_key    TEXT UNIQUE,
    created_at    INTEGER NOT NULL,
    -- The newest committed seq, written in the same transaction as the messages.
    last_seq      INTEGER NOT NULL DEFAULT 0,
    -- The newest message's time, else created_at: the order of the conversation list.
    last_activity INTEGER NOT NULL
);

CREATE TABLE members (
    conv_id   BLOB NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    user_id   BLOB NOT NULL,
    role      TEXT NOT NULL CHECK (role IN ('member', 'admin', 'customer', 'agent', 'business')),
    -- Only ever moves forward (the store writes MAX).
    last_read INTEGER NOT NULL DEFAULT 0,
    muted     INTEGER NOT NULL DEFAULT 0,
    -- Standing: admin succession promotes the smallest.
    joined    INTEGER NOT NULL,
    -- A user is a member of a conversation at most once.
    PRIMARY KEY (conv_id, user_id)
);
-- A user's conversation list starts from their memberships.
CREATE INDEX members_by_user ON members (user_id);

CREATE TABLE messages (
    conv_id    BLOB NOT NULL,
    seq        INTEGER NOT NULL,
    mid        BLOB NOT NULL,
    sender     BLOB NOT NULL,
    kind       TEXT NOT NULL,
    -- Kept after a soft delete for the audit period, then erased (set to NULL).
    body       TEXT,
    at         INTEGER NOT NULL,
    deleted_at INTEGER,
    -- The final guard of order: no two messages under one seq of a conversation.
    PRIMARY KEY (conv_id, seq)
) WITHOUT ROWID;
-- A mid is stored once across all conversations: a retry finds the first result.
CREATE UNIQUE INDEX messages_mid ON messages (mid);
-- The retention job removes by age.
CREATE INDEX messages_at ON messages (at);
-- The audit job erases deleted bodies by deletion time.
CREATE INDEX messages_deleted_at ON messages (deleted_at) WHERE deleted_at IS NOT NULL;
