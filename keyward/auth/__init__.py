"""Proving who calls the keyward server: signed requests, replay protection, session tokens.

Pure modules (no HTTP, no database): ``signing`` builds and checks the canonical text a
client signs with its registered SSH key, ``nonces`` remembers what was already used, and
``tokens`` issues and checks the short-lived session tokens ``keyward auth login`` gets.
"""
