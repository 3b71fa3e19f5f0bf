"""Cluster mode (CONTRACT 8): the state several osnova-server processes share through Redis.

Nothing here is imported unless `[cluster] redis_url` is set, so the embedded default never
loads redis-py. Each module gives a shared version of one in-process piece, behind the same
small interface: `ratelimit` (RateLimiter), `events` (EventBus), `pairing` (PairingCodes),
`bans` (the failure counts and bans of BanList), `slots` (the WebSocket slots of max_clients
and max_clients_per_device). `link` holds the one Redis connection and its pub/sub channel.
"""
