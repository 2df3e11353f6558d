"""Test fixtures shipped with the package: a loopback chat-completions server and a tiny VLM.

Like ``torch.testing``, these exist so tests (here and in downstream projects) can drive the real
judge clients offline; nothing in the runtime package imports them.
"""
