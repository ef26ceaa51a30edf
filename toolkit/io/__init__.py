"""Reading and writing images, tables and pictures. See ``readers``, ``writers`` and ``pictures``."""
