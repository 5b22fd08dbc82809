"""reidloop core: data, models, losses, metrics, DRAL and acquisition strategies.

This package never imports Ray; the Ray layers live in ``services/`` (the entry points in ``trainers/``).
"""
__version__ = "0.1.0"
