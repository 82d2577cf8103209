from . import host  # noqa: F401  (registers the kind)
