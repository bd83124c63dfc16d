"""The HTTP service for billing pulls and usage queries (``meterlake serve``). May import every
other stage.

::

    app       create_app(root, settings, *, clock): the routes, auth, errors and metrics wired
    bills     /v1/bills: a period's bills paged by signed cursor, one bill with its lines
    usage     /v1/meters/{id}/usage|curve|tier-progress and /v1/alerts
    auth      bearer tokens, scopes and account limits (constant-time comparison)
    cursor    opaque HMAC-signed page cursors (pure)
    lake      what the API reads: Polars scans, snapshots of hot tables kept until files change
    render    frames to deterministic JSON bytes, ETags
    params    parameter patterns and parsing (a 400 for every bad value)
    errors    ApiError and RFC 9457 problem answers
    metrics   /metrics (Prometheus) and the request log
    models    the answers' shapes for the OpenAPI document
    serve     uvicorn: listen, TLS, run

The endpoints, the cursor and the errors are described in ``docs/api.md``.
"""
