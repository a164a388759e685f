"""One module per subcommand; each has `prepare_parser(parser)` and `run(args) -> int`."""
