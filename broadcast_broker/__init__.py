"""The broker: queue topology, the Redis stream transport, the message codec, and the one
way Broadcast sends its own tasks (`task_client.TaskSender`).

Imports `settings` (the event limits the codec enforces, the Redis command types the
stream transport uses); never the engine or above.
"""
