"""`make bench-live`: live events at scale (python -m bench.live); see __main__.py."""
