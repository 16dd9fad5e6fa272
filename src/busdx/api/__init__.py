"""The REST API and the web page (FastAPI). Start it with ``busdx serve``."""
