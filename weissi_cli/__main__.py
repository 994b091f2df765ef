"""Entry point for `python -m weissi_cli`."""

from weissi_cli.cli.app import main

if __name__ == "__main__":
    main()
