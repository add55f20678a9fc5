"""The `aape` command line. One module per area registers its subcommands in `main.py`."""
