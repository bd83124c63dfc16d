"""The HTTP service for billing pulls and usage queries. May import every other stage."""
