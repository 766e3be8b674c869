"""Postpaid: billing cycles, spending limits, invoice preview, invoices and the spend check."""
