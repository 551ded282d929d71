"""Codec bitstream helpers: just enough parsing to put encoded frames into containers."""
