"""nexusd: AI HTTP services that run as systemd units on bare-metal GPU hosts."""

__version__ = "0.1.0"
