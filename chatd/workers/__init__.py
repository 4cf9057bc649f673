"""The background loops: queue consumers, the search indexer and the count reconciler."""
