"""Thin HTTP views: parse the request, call the service, render the answer."""
