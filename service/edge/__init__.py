"""The web edge: the aiohttp application, its HTTP handlers and the
WebSocket shell around the connection protocol. It turns requests and frames
into application commands and reads, and never touches the store itself."""
