"""Settings, the column contract, identifiers and errors: the layer everything else stands on.

``config`` imports nothing else of meterlake.
"""
