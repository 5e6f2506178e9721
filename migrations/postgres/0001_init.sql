-- chat-backend schema, PostgreSQL dialect (migrations/sqlite holds the same invariants).

CREATE TABLE conversations (
    id            UUID PRIMARY KEY,
    kind          TEXT NOT NULL CHECK (kind IN ('direct', 'group', 'business')),
    name          TEXT,
    business      UUID,
    -- One direct conversation per pair of users ('direct:<lo>:<hi>') and one business
    -- conversation per customer and business; NULL (never equal) for groups.
    unique_key    TEXT UNIQUE,
    created_at    BIGINT NOT NULL,
    -- The newest committed seq, written in the same transaction as the messages.
    last_seq      BIGINT NOT NULL DEFAULT 0,
    -- The newest message's time, else created_at: the order of the conversation list.
    last_activity BIGINT NOT NULL
);

CREATE TABLE members (
    conv_id   UUID NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    user_id   UUID NOT NULL,
    role      TEXT NOT NULL CHECK (role IN ('member', 'admin', 'customer', 'agent', 'business')),
    -- Only ever moves forward (the store writes GREATEST).
    last_read BIGINT NOT NULL DEFAULT 0,
    muted     BOOLEAN NOT NULL DEFAULT FALSE,
    -- Standing: admin succession promotes the smallest.
    joined    BIGINT NOT NULL,
    -- A user is a member of a conversation at most once.
    PRIMARY KEY (conv_id, user_id)
);
-- A user's conversation list starts from their memberships.
CREATE INDEX members_by_user ON members (user_id);

CREATE TABLE messages (
    conv_id    UUID NOT NULL,
    seq        BIGINT NOT NULL,
    mid        UUID NOT NULL,
    sender     UUID NOT NULL,
    kind       TEXT NOT NULL,
    -- Kept after a soft delete for the audit period, then erased (set to NULL).
    body       TEXT,
    at         BIGINT NOT NULL,
    deleted_at BIGINT,
    -- The final guard of order: two owners for a moment can never store two messages
    -- under one seq (the loser gets a unique violation, reloads and renumbers).
    PRIMARY KEY (conv_id, seq)
);
-- A mid is stored once across all conversations: a retry finds the first result.
CREATE UNIQUE INDEX messages_mid ON messages (mid);
-- The retention job removes by age.
CREATE INDEX messages_at ON messages (at);
-- The audit job erases deleted bodies by deletion time.
CREATE INDEX messages_deleted_at ON messages (deleted_at) WHERE deleted_at IS NOT NULL;
