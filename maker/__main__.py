"""``python -m maker`` runs the CLI."""

from ._cli import main

if __name__ == "__main__":
    main()
