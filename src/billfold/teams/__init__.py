"""Teams, their management keys, their billing info, and the operator token."""
