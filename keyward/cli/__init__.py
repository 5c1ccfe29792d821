"""The ``keyward`` command line."""
