"""Vendor emulators: real HTTP servers on loopback (`harness.receiver.Receiver`) that
check auth, validate bodies with the vendor's own models or schemas, and answer as the
vendor documents."""
