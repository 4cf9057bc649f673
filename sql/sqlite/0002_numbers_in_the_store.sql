-- Numbers are taken in the store, in the transaction that records their idempotency keys:
-- nothing any other server forgets or un-learns can hand a number out twice.
-- number_counters: the last number handed out in each scope ('chats:<application id>',
-- 'messages:<application id>:<chat number>'). It starts above every number the old design
-- may have handed out: its reservations (which were always ahead of its counters) and every
-- stored number. The numbers between a counter's old position and its reservation are burnt.
CREATE TABLE number_counters (
    scope       TEXT    PRIMARY KEY,
    last_number INTEGER NOT NULL
) WITHOUT ROWID;

INSERT INTO number_counters (scope, last_number) SELECT scope, reserved_upto FROM number_reservations;

INSERT INTO number_counters (scope, last_number)
    SELECT 'chats:' || application_id, MAX(number) FROM chats GROUP BY application_id
    ON CONFLICT (scope) DO UPDATE SET last_number = MAX(last_number, excluded.last_number);

INSERT INTO number_counters (scope, last_number)
    SELECT 'messages:' || c.application_id || ':' || c.number, MAX(m.number)
    FROM messages m JOIN chats c ON c.id = m.chat_id GROUP BY c.id
    ON CONFLICT (scope) DO UPDATE SET last_number = MAX(last_number, excluded.last_number);

-- Gone, so that a process of the old design still running can no longer reserve numbers.
DROP TABLE number_reservations;

-- The idempotency keys of creations: '<application id>:<key>' -> the number its first request
-- took and what that request asked for (kind, chat, a hash of the content); kept until
-- expires_at (seconds since the epoch), then swept.
CREATE TABLE idempotency_keys (
    idempotency_key TEXT    PRIMARY KEY,
    number          INTEGER NOT NULL,
    fingerprint     TEXT    NOT NULL,
    expires_at      REAL    NOT NULL
) WITHOUT ROWID;

CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_at);
