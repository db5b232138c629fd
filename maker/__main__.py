"""``python -m maker`` runs the CLI."""

from .apps.cli._cli import main

if __name__ == "__main__":
    main()
