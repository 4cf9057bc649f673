-- Numbers are taken in the store, in the transaction that records their idempotency keys:
-- nothing any other server forgets or un-learns can hand a number out twice.
-- (0004 drops the old reservations and adds the idempotency keys; two files, so that a run
-- interrupted after the drop does not re-run the copy from the dropped table.)
-- number_counters: the last number handed out in each scope ('chats:<application id>',
-- 'messages:<application id>:<chat number>'). It starts above every number the old design
-- may have handed out: its reservations (which were always ahead of its counters) and every
-- stored number. The numbers between a counter's old position and its reservation are burnt.
CREATE TABLE IF NOT EXISTS number_counters (
    scope       VARCHAR(191) COLLATE utf8mb4_bin NOT NULL,
    last_number BIGINT       NOT NULL,
    PRIMARY KEY (scope)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

INSERT INTO number_counters (scope, last_number)
    SELECT scope, reserved_upto FROM number_reservations AS r
    ON DUPLICATE KEY UPDATE last_number = GREATEST(number_counters.last_number, r.reserved_upto);

INSERT INTO number_counters (scope, last_number)
    SELECT s, n FROM (
        SELECT CONCAT('chats:', application_id) AS s, MAX(number) AS n FROM chats GROUP BY application_id
    ) AS stored
    ON DUPLICATE KEY UPDATE last_number = GREATEST(number_counters.last_number, stored.n);

INSERT INTO number_counters (scope, last_number)
    SELECT s, n FROM (
        SELECT CONCAT('messages:', c.application_id, ':', c.number) AS s, MAX(m.number) AS n
        FROM messages m JOIN chats c ON c.id = m.chat_id GROUP BY c.id
    ) AS stored
    ON DUPLICATE KEY UPDATE last_number = GREATEST(number_counters.last_number, stored.n);
