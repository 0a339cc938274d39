"""Pieces of the SemiSupSeg Slicer module.

``commands``, ``progress``, ``job``, ``cases`` and ``labels`` are plain Python (no slicer, no qt) and are
tested with pytest; ``nodes`` converts between Slicer nodes and files and runs only inside Slicer.
"""
