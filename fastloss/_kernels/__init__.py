"""Compiled drivers, one per kind of loss and device. Nothing here names a specific loss."""
