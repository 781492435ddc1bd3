"""NDIF: shipping the library with a request, capture, submit-once backend, preflight, NDIF's failures as one-line errors."""
