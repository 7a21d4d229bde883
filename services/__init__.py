"""The HTTP edge gateway and the command side: identity (and later rate limits, metering, billing)."""
