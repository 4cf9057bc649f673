"""Per-application rate limits: one tenant cannot take the service from the others.

``policies``: what a limit is (a rate with a burst, or a number of concurrent streams), the
settings' defaults and the admin's overrides, and the IETF ``RateLimit-Policy`` / ``RateLimit``
fields each answer carries. ``gcra``: the decision itself (the generic cell rate algorithm,
what the Redis script runs too). ``local``: the in-process counters (the embedded default, and
the fallback while Redis is down). ``book``: each application's limits, memoized per process.
``limiter``: what the service calls, once per request.
"""
