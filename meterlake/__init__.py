"""meterlake: smart-meter data from the meter to the bill.

The subpackages are the stages of one data flow (see ``README.md``):
``ingest`` -> ``storage`` -> ``analytics`` / ``tariffs`` -> ``alerts`` -> ``api``,
with ``config`` underneath all of them and ``cli`` as the composition root.
"""

__version__ = "0.1.0"
