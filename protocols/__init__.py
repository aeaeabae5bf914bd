"""Sans-I/O protocol state machines (middle layer: ``peers`` → ``protocols`` → ``mpc_agg``).

A machine is driven by inputs — ``begin(update)``, ``receive(sender, data)``,
``deadline(phase)`` — and returns a list of :mod:`protocols.effects`. It never touches a
socket, a clock, an event loop or ambient randomness; a runtime (``peers``) or the
in-process :mod:`protocols.harness` performs the effects.
"""
