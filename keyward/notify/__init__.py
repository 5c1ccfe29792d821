"""Notifications: who is told what when access is requested, decided or ends, or a key
is about to expire, and delivering that through the command hook and webhooks.

Delivery is never part of the change it reports: the server hands it to a background
worker after the write committed, and a failure is logged, never raised into the request.
"""
