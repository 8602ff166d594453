"""Permissioned BFT ledger: sans-I/O consensus core, block store and contract."""
