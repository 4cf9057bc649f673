-- chatd schema for SQLite (the embedded default).
CREATE TABLE applications (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    token       TEXT    NOT NULL UNIQUE,
    name        TEXT    NOT NULL,
    chats_count INTEGER NOT NULL DEFAULT 0,
    created_at  TEXT    NOT NULL,
    updated_at  TEXT    NOT NULL
);
CREATE INDEX applications_created ON applications (created_at, id);

CREATE TABLE chats (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    application_id INTEGER NOT NULL REFERENCES applications (id),
    number         INTEGER NOT NULL,
    messages_count INTEGER NOT NULL DEFAULT 0,
    created_at     TEXT    NOT NULL,
    UNIQUE (application_id, number)
);

CREATE TABLE messages (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    chat_id    INTEGER NOT NULL REFERENCES chats (id),
    number     INTEGER NOT NULL,
    content    TEXT    NOT NULL,
    revision   INTEGER NOT NULL DEFAULT 1,
    created_at TEXT    NOT NULL,
    updated_at TEXT    NOT NULL,
    UNIQUE (chat_id, number)
);

-- Numbers that counters may have handed out, kept ahead of them in blocks, so that a
-- counter that loses its state resumes above every number already promised.
CREATE TABLE number_reservations (
    scope         TEXT    PRIMARY KEY,
    reserved_upto INTEGER NOT NULL
);

-- Count changes written in the same transaction as the rows they count; the reconciler
-- folds them into chats_count / messages_count and deletes them in one transaction.
CREATE TABLE count_deltas (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    application_id INTEGER NOT NULL,
    chat_id        INTEGER,
    delta          INTEGER NOT NULL
);
