-- Edits as durable as creations (issue 17). An edit writes a row in edit_outbox in its own
-- transaction; the edit relay (chatd/workers/edit_relay.py) publishes the message's index job,
-- announces the edit, and only then deletes the row. So a publish that fails leaves the row
-- for the next pass instead of leaving the search index behind the store.
CREATE TABLE edit_outbox (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id INTEGER NOT NULL,
    revision   INTEGER NOT NULL
);

-- The time of the last edit of each edited message: what a live client resuming with
-- Last-Event-ID is sent again (message.updated of the edits within the replay window).
-- A table of its own rather than an index on messages: creations never pay for it.
CREATE TABLE message_edits (
    chat_id    INTEGER NOT NULL,
    number     INTEGER NOT NULL,
    updated_at TEXT    NOT NULL,
    PRIMARY KEY (chat_id, number)
) WITHOUT ROWID;

CREATE INDEX message_edits_by_time ON message_edits (chat_id, updated_at);
