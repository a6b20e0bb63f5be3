"""One module per ``bench`` subcommand (see benchmarks/cli.py for the contract)."""
