"""Building named Python environments (uv or venv + pip) on a host. Knows nothing of Django.

The business rules (who may build what, the database row, the lock) are in services/environments.py.
"""
