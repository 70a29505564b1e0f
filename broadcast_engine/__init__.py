"""What happens to an event: intake and validation, eligibility, the trace store and the
per-destination backlogs, delivery runs and the policy that decides after each attempt,
health, dead letters, owner notifications, beat's upkeep, and the runtime that wires them.

Imports `broadcast_broker`, `settings` and `destinations`; never `tasks` or
`broadcast_interfaces` (docs/architecture.md, "Layers").
"""
