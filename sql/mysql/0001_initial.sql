-- chatd schema for MySQL 8 / MariaDB 10.11 (InnoDB, utf8mb4).
-- Same tables and meaning as sql/sqlite/0001_initial.sql. Times are UTC, DATETIME(3).
-- IF NOT EXISTS because DDL commits implicitly: a run interrupted half-way can be re-run.
-- Tokens and scopes compare as bytes (utf8mb4_bin), as on SQLite: a token differing only in
-- case is another token.
-- No foreign keys: InnoDB would take shared locks on the parent chat/application row for
-- every child insert, coupling the message workers to the reconciler's count updates on
-- the same rows; the store only inserts children of parents it has just looked up, and
-- nothing is ever deleted.
CREATE TABLE IF NOT EXISTS applications (
    id          BIGINT       NOT NULL AUTO_INCREMENT,
    token       VARCHAR(64)  COLLATE utf8mb4_bin NOT NULL,
    name        VARCHAR(255) NOT NULL,
    chats_count BIGINT       NOT NULL DEFAULT 0,
    created_at  DATETIME(3)  NOT NULL,
    updated_at  DATETIME(3)  NOT NULL,
    PRIMARY KEY (id),
    UNIQUE KEY applications_token (token),
    KEY applications_created (created_at, id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

CREATE TABLE IF NOT EXISTS chats (
    id             BIGINT      NOT NULL AUTO_INCREMENT,
    application_id BIGINT      NOT NULL,
    number         BIGINT      NOT NULL,
    messages_count BIGINT      NOT NULL DEFAULT 0,
    created_at     DATETIME(3) NOT NULL,
    PRIMARY KEY (id),
    UNIQUE KEY chats_application_number (application_id, number)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

CREATE TABLE IF NOT EXISTS messages (
    id         BIGINT      NOT NULL AUTO_INCREMENT,
    chat_id    BIGINT      NOT NULL,
    number     BIGINT      NOT NULL,
    content    TEXT        NOT NULL,
    revision   INT         NOT NULL DEFAULT 1,
    created_at DATETIME(3) NOT NULL,
    updated_at DATETIME(3) NOT NULL,
    PRIMARY KEY (id),
    UNIQUE KEY messages_chat_number (chat_id, number)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

-- Numbers that counters may have handed out, kept ahead of them in blocks, so that a
-- counter that loses its state resumes above every number already promised.
-- VARCHAR(191): the longest utf8mb4 key that fits the old 767-byte index limit.
CREATE TABLE IF NOT EXISTS number_reservations (
    scope         VARCHAR(191) COLLATE utf8mb4_bin NOT NULL,
    reserved_upto BIGINT       NOT NULL,
    PRIMARY KEY (scope)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

-- Count changes written in the same transaction as the rows they count; the reconciler
-- folds them into chats_count / messages_count and deletes them in one transaction.
CREATE TABLE IF NOT EXISTS count_deltas (
    id             BIGINT NOT NULL AUTO_INCREMENT,
    application_id BIGINT NOT NULL,
    chat_id        BIGINT NULL,
    delta          BIGINT NOT NULL,
    PRIMARY KEY (id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;
