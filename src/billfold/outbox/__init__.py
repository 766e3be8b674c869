"""The transactional outbox: events written in the transaction of the change that causes them.

Just above ``kit``, so that every domain can write one (``enqueue``) inside its own transaction;
delivery lives at the top of the stack (``notifications/``).
"""
