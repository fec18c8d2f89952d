"""People who sign in: accounts, passwords, email verification."""
