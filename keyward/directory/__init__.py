"""Syncing people from the company directory (LDAP, Active Directory).

``model`` holds the plain values, ``entries`` turns LDAP attributes into them,
``ldap`` reads the directory with ldap3, ``diff`` compares it with the
registry (pure), and ``guard`` refuses a sync that looks like an accident
(pure). Writing the result is ``keyward/registry/directory.py``; the command,
and the one call into the offboarding round, is ``keyward/cli/directory_cmds.py``.
"""
