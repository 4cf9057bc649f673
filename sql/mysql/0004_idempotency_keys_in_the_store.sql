-- Gone, so that a process of the old design still running can no longer reserve numbers.
DROP TABLE IF EXISTS number_reservations;

-- The idempotency keys of creations: '<application id>:<key>' -> the number its first request
-- took and what that request asked for (kind, chat, a hash of the content); kept until
-- expires_at (milliseconds since the epoch), then swept.
CREATE TABLE IF NOT EXISTS idempotency_keys (
    idempotency_key VARBINARY(300) NOT NULL,
    number          BIGINT         NOT NULL,
    fingerprint     VARBINARY(100) NOT NULL,
    expires_at      BIGINT         NOT NULL,
    PRIMARY KEY (idempotency_key),
    KEY idempotency_keys_expiry (expires_at)
) ENGINE = InnoDB
