"""Faces: detectors + landmarks + alignment, parsing, the 3DMM."""
