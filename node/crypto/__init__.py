"""Encryption at rest per data subject (crypto-shredding).

A record about a subject is sealed under a data key of that subject and retention class
(envelope.py, stored as sealing.py lays it out); the data keys live in their own small store,
wrapped by the region's key-encryption key (keyring.py). Destroying a subject's data keys makes
every copy of its sealed records unreadable, including old database files and backups that
still hold the ciphertext.
"""
