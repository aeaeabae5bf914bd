"""Runtime layer (top): CLI, and — as the runtime grows — transports, PeerNode, configs.

Only this layer may do I/O, read clocks or run an event loop.
"""
