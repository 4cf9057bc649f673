"""Live chats: events pushed to subscribers over Server-Sent Events and WebSocket.

A worker stores a batch, then announces it through a fan-out (``fanout``); every api process
hands the announcements to its ``Hub``, whose per-chat ``Feed`` delivers them to that process's
subscribers in number order, reading the store for whatever it did not hear (a replay on
resume, a lost announcement, a hole in the numbers).
"""
