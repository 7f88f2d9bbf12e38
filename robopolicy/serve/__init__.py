"""Realtime serving: the wire format, the inference server, the client, the control loop and its scheduler."""
