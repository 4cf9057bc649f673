"""`make bench`: throughput and latency of chatd on the embedded and the real backends."""
