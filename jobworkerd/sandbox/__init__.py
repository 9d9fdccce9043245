"""The job sandbox, daemon side: profiles (what each role's jobs get), the seccomp program, and the mount
plan the launcher builds in the job's namespaces (jobworkerd/launcher/sandbox.py is its other half)."""
