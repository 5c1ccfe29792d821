"""The keyward agent: SSH connections to managed hosts and the program run on each of them."""
