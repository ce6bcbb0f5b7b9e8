"""Offline corpus builders and the MuST-C reader."""
