-- Numbers a restore burnt (issue 18): in each scope, the numbers after burnt_after up to
-- burnt_upto were lost with the old store or never handed out, and never will be: reads of
-- them answer 404 like numbers never taken, not "accepted and not stored yet".
CREATE TABLE number_fences (
    scope       TEXT    NOT NULL,
    burnt_after INTEGER NOT NULL,
    burnt_upto  INTEGER NOT NULL,
    PRIMARY KEY (scope, burnt_after)
) WITHOUT ROWID;
