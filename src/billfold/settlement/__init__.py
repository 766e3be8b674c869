"""Settling provider charges from outside a request: Stripe's webhooks and reconciliation.

Above top-ups and invoicing (it settles both), below the composition roots.
"""
