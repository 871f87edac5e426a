"""Custom pieces of the emseg bundle, referenced from the configs as ``scripts.<module>.<name>``."""

from . import data, handlers, inferers, losses, metrics, report  # noqa: F401  (configs reach them as attributes of ``scripts``)
