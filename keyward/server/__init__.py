"""``keyward server``: the registry over HTTP, for a team whose members prove who they are.

- ``identity``: who is calling (a signed request or a session token), checked against
  the registry on every request;
- ``authz``: what the caller may do, from the roles they hold in the registry and
  ``[server]`` in ``keyward.toml``; ``MATRIX`` is the documented answer per caller;
- ``app``: the Starlette application (the endpoints);
- ``run``: uvicorn, the listening address and TLS.

See docs/server.md.
"""
