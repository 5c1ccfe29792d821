"""``python -m keyward``."""

from keyward.cli.main import main

main()
