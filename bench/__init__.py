"""Benchmarks: sessiond against a bare aiohttp server and python-socketio."""
