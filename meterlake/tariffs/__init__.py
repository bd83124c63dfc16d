"""Tariffs as data (native TOML, OpenEI URDB JSON), calendars and the vectorised bill engine.
Imports ``config`` and ``storage``.
"""
