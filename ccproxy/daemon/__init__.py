"""The twistd daemon: `tap` parses the options and validates the config, `wiring`
builds the whole object graph (`buildService`, the composition root), `service`
runs its lifecycle (signals, reload, drain, stop); `listen` and `logs` are the port
and the log files. The only package that touches the global reactor (`makeService`).
"""
