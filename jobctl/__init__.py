"""jobctl: the command line client of jobworkerd.

    cli.py       argparse and dispatch (imports no grpc, so --help and usage errors are quick)
    commands.py  what each command does
    settings.py  connection settings: options, environment, selected context, config file's top level
    contexts.py  jobctl context add|use|ls|rm: the config file only (no grpc), rewritten atomically
    complete.py  the hidden `jobctl __complete-ids` behind the bash completion's job ids
    client.py    the mutual-TLS channel, the calls, error translation, reconnecting streams
    diagnose.py  why a connection failed (client certificate, key, CA), on the error path only
    render.py    the ls table, the status view, JSON, exit status of a finished job
    errors.py    JobctlError (exit 1) and UsageError (exit 2)

From the jobworkerd package it imports only the generated stubs and jobworkerd.units.
"""
