"""The browser edge: JSON over HTTP, Server-Sent Events, auth and the web workbench."""
