"""Operation implementations a config can name.

``binary`` holds elementwise (row-by-row) operations, ``private`` the map
halves of aggregates (run on a server over private rows), ``public`` their
reduce halves (run on the client over the servers' results).
"""
