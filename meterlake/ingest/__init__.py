"""Getting readings in: file import, the fleet simulator, and (next) device profiles, register
decoding, payload decoders, the Modbus and MQTT collectors and their spool.

``ingest`` imports only ``config``; it hands frames to the caller, which writes them to the lake.
"""
