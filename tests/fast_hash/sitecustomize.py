"""Imported at start-up by every process of a test's MLflow auth server (servers.auth_server puts this folder
on its PYTHONPATH): passwords are hashed with one round of PBKDF2 instead of werkzeug's default
scrypt, whose check costs about 0.5 s of CPU per authenticated request on 2 cores (measured
2026-11-27: 0.54 s vs 0.015 s). Only for a throwaway server in a test; the authentication is
unchanged: a wrong or missing password is still refused."""

import functools

import werkzeug.security

werkzeug.security.generate_password_hash = functools.partial(
    werkzeug.security.generate_password_hash, method="pbkdf2:sha256:1"
)
