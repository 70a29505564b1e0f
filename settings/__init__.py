"""What owners and operators configure: configuration, the settings models and their
Redis store (with every key name), encryption and key rotation, masking and redaction,
filter rules, management API keys, and the event limits.

The bottom layer beside `destinations`: imports nothing of Broadcast but `destinations`.
"""
