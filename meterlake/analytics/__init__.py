"""Register reads to validated intervals (VEE), daily curves, load statistics, anomaly scores
and reports. Imports ``config`` and ``storage``.
"""
