-- The embedded search file (not the store): layout 3 -> 4. Applied by
-- chatd/backends/sqlite_search_layout.py when the file is opened, in the transaction that records
-- the new layout; files numbered by the layout they bring.
--
-- Layout 3 kept one deletion neighbourhood for the whole file, so every tenant's words were typo
-- candidates of every other tenant's search (40,000 typos of a word in one application slowed the
-- same word's search in all the others a hundredfold). Layout 4 keeps one per application:
-- search_app_vocabulary and search_app_deletions (created by the index's schema when the file is
-- opened, before this runs). They are rebuilt here from the words the file already indexes
-- (search_terms), so the existing documents stay searchable, typos included, without a reindex.
--
-- chatd_search_depth(term) and chatd_search_deletions(term) (a JSON array) are the index's own
-- definitions (term_depth, deletions), registered on the connection that applies this file.
INSERT OR IGNORE INTO search_app_vocabulary (application_id, term)
    SELECT DISTINCT application_id, term FROM search_terms WHERE chatd_search_depth(term) > 0;

INSERT OR IGNORE INTO search_app_deletions (application_id, variant, term)
    SELECT vocabulary.application_id, variant.value, vocabulary.term
    FROM search_app_vocabulary AS vocabulary, json_each(chatd_search_deletions(vocabulary.term)) AS variant;

DROP TABLE IF EXISTS search_deletions;
DROP TABLE IF EXISTS search_vocabulary;
