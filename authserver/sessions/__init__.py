"""Browser sign-in sessions, kept server-side; the cookie carries only a random id."""
