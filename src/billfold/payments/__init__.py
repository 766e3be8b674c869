"""Payment methods and the payment provider interface (sandbox embedded, Stripe-shaped)."""
