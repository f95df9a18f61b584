"""Placement of instances on nodes with room, with no central scheduler (``core`` is pure)."""
