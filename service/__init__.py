"""sessiond's service layer: the aiohttp application, the store and its
async bridge, auth, the live hub and the ``sessiond`` command line."""
