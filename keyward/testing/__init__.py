"""Local SSH fleets, throw-away keys and inventories: for ``keyward demo``, tests and benchmarks.

keyward's claims are about what a real ``sshd`` accepts, so the demo and the tests run
real SSH servers on loopback instead of mocks.  This package ships (``keyward demo`` needs
it on a machine with nothing set up) but no production path imports it: the agent, the
daemon and the registry never do.  Its modules import only what they use, so importing the
package costs nothing; creating local accounts is left to the tests (``tests/accounts.py``).
"""
