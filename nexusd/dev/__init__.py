"""`nexusd dev`: the whole stack on one machine, started the way systemd would start it."""
