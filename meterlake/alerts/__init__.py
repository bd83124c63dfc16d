"""Alert rules, their evaluation, state (cooldown, resolution) and sinks.
May import ``config``, ``storage``, ``analytics`` and ``tariffs``.
"""
