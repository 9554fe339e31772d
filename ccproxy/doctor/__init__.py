"""`python -m ccproxy doctor`: `checks` are the pure findings, `probe` makes the HTTP
probes (urllib), `cli` parses the command line and prints. It may use from ccproxy
only the config and the upstream client (an import-linter contract), never the
daemon, so the daemon's header rule is shared and the CLI stays out of the server.
"""
