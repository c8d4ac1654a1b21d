"""The HTTP front end: the aiohttp application, its routes and its error shapes."""
