"""Django's SQLite backend, with the database file created 0600 before SQLite opens it.

SQLite creates a database file 0644 less the umask, and gives its -wal, -shm and -journal files the
mode of the database file: created 0600 first, all of them stay private to their owner whatever the
umask (the database holds API tokens, sessions, callback secrets and root password hashes).
"""

from django.db.backends.sqlite3 import base

from vmseal.private import create_private_file


class DatabaseWrapper(base.DatabaseWrapper):
    def get_new_connection(self, conn_params):
        if not self.is_in_memory_db():
            create_private_file(conn_params["database"])
        return super().get_new_connection(conn_params)
