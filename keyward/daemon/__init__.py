"""The keyward daemon: enforce the registry continuously over connections it keeps open."""
