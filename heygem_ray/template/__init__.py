"""The template: what analysis keeps of a reference, read by every job that uses it.

``files``: its files and ``Template``, which opens one checked whole; ``store``: the frame
store inside it; ``damage``: a template found damaged; ``cache``: where templates live in
a cache folder (keys, locks, remembered failures) and its housekeeping (``scan``, ``prune``).
The ``analyze`` stage builds them.
"""
