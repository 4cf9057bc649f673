-- Edits as durable as creations (issue 17); the same tables as sql/sqlite/0003_edit_outbox.sql.
-- edit_outbox: written in the edit's transaction, deleted by the edit relay once the index job
-- is confirmed by the broker. message_edits: the time of each edited message's last edit, for
-- the live replay of edits to a resuming client (a table of its own: creations never pay for it).
CREATE TABLE IF NOT EXISTS edit_outbox (
    id         BIGINT NOT NULL AUTO_INCREMENT,
    message_id BIGINT NOT NULL,
    revision   INT    NOT NULL,
    PRIMARY KEY (id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

CREATE TABLE IF NOT EXISTS message_edits (
    chat_id    BIGINT      NOT NULL,
    number     BIGINT      NOT NULL,
    updated_at DATETIME(3) NOT NULL,
    PRIMARY KEY (chat_id, number),
    KEY message_edits_by_time (chat_id, updated_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;
