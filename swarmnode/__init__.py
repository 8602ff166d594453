"""swarmnode: Swarm Learning in Python.

Sites train one shared model on data that never leaves them: nodes meet on a
libp2p mesh, agree on membership and rounds through a permissioned BFT ledger,
and merge parameters with threshold CKKS so no one sees another site's update.
"""

__version__ = "0.1.0"
