"""A C2SP tlog-witness: cosigns a log's checkpoint only when it extends the last one it
cosigned for that origin (see `server.py` for the protocol, `state.py` for durability)."""
