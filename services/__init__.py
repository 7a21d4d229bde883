"""The HTTP edge gateway and the command side: identity, plans, rate limits and metering, billing, the bus's
trust boundary. Each is a subpackage; this package itself exports nothing."""

__all__: list[str] = []
