"""Training and evaluation, free of Django: reads exported files, writes checkpoints.

Importing this package loads no torch; a trainer imports it when it is used.
"""
