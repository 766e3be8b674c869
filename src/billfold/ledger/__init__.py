"""Prepaid credits: the append-only ledger, top-ups and grants, and the balance."""
