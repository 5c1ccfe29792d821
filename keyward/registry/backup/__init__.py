"""Snapshots of the registry: take, verify, list, prune, restore, copy elsewhere.

The workflows (``create``, ``retention``, ``restore``) write their audit events
and raise ``KeywardError``s but never print or log; ``keyward.cli.backup_cmds``
is the command-line face.  ``files`` and ``signing`` are the snapshot on disk,
``sqlite`` and ``postgres`` the two backends, ``verify`` and ``rebuild`` what
both check and rebuild, ``copy_command`` the off-site copy.
"""
