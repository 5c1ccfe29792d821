"""keyward: who can log in where, why and since when, kept true on every host."""

__version__ = "0.1.0"
