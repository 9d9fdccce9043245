"""Job networking, daemon side.

- `nftables`: a small ctypes binding of libnftables (Debian's libnftables1); the daemon never runs `nft`.
- `rules`: the ruleset the daemon owns (tables `inet jobworkerd` and `bridge jobworkerd`): masquerade,
  job isolation, per-job egress policy, port publishing; pure functions that write nft script text,
  and `Firewall`, which applies them through `nftables.Nft`.
"""
