"""What each ``searchrl`` sub-command runs (cli.py parses the arguments): thin wrappers over library calls,
one module per group. cli.py imports a group's module only when one of its commands runs, so each module
imports what it needs at the top and ``searchrl --help`` still starts fast."""
