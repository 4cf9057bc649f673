-- Tokens compare as exact bytes on every engine. utf8mb4_bin is a PAD SPACE collation on
-- MariaDB: 'abc ' = 'abc', so a token with spaces appended found its application. VARBINARY
-- compares bytes with no padding, on MariaDB and MySQL alike. Re-running it changes nothing.
ALTER TABLE applications MODIFY token VARBINARY(64) NOT NULL
