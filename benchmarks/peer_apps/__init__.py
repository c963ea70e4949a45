"""Each library's side of ``benchmarks/peers.py``: its workers' settings and its client, one module each.

Every module offers the same two jobs, ``noop(value)`` and ``nap(value, seconds)``, both returning
``value`` so that the caller can check each result, and a ``Client`` that ``driver`` drives. The
peers' modules import only their own library: they run in ``.venv-peers``, which has no coditect.
"""
