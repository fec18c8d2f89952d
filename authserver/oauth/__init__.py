"""The OAuth 2.1 / OpenID Connect protocol: the only package that imports authlib's server."""
