-- Numbers a restore burnt (issue 18); the same table as sql/sqlite/0005_number_fences.sql.
CREATE TABLE IF NOT EXISTS number_fences (
    scope       VARCHAR(191) COLLATE utf8mb4_bin NOT NULL,
    burnt_after BIGINT       NOT NULL,
    burnt_upto  BIGINT       NOT NULL,
    PRIMARY KEY (scope, burnt_after)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci
