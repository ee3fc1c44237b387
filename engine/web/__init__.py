"""The web server, its thumbnails and its static page."""
